//! Orders as the API receives them (OrderRequest) and as the domain accepts them
//! (NewOrder): 1..=50 lines, quantities 1..=100. Errors name the offending field.

use serde::{Deserialize, Serialize};

/// Lines per order, inclusive bounds.
pub const MAX_LINES: usize = 50;
/// Quantity per line, inclusive bounds.
pub const MAX_QUANTITY: i64 = 100;

/// The wire shape of `POST /api/orders`. Prices are deliberately absent: the server prices.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRequest {
    pub items: Option<Vec<OrderRequestItem>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderRequestItem {
    pub product_id: Option<String>,
    pub quantity: Option<i64>,
}

/// A validation failure: which field (JSON path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(u8);

impl Quantity {
    pub fn parse(raw: i64) -> Result<Self, String> {
        if (1..=MAX_QUANTITY).contains(&raw) {
            Ok(Self(raw as u8))
        } else {
            Err(format!("must be between 1 and {MAX_QUANTITY}, got {raw}"))
        }
    }

    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrderLine {
    pub product_id: String,
    pub quantity: Quantity,
}

/// An order that passed every check that needs no catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub lines: Vec<NewOrderLine>,
}

impl TryFrom<OrderRequest> for NewOrder {
    type Error = FieldError;

    fn try_from(req: OrderRequest) -> Result<Self, FieldError> {
        let items = req.items.ok_or_else(|| FieldError::new("items", "is required"))?;
        if items.is_empty() {
            return Err(FieldError::new("items", "must contain at least one item"));
        }
        if items.len() > MAX_LINES {
            return Err(FieldError::new("items", format!("must contain at most {MAX_LINES} items, got {}", items.len())));
        }
        let lines = items
            .into_iter()
            .enumerate()
            .map(|(idx, item)| {
                let product_id = match item.product_id {
                    Some(id) if !id.trim().is_empty() && id.len() <= 64 => id,
                    Some(_) => return Err(FieldError::new(format!("items[{idx}].productId"), "must be 1 to 64 characters")),
                    None => return Err(FieldError::new(format!("items[{idx}].productId"), "is required")),
                };
                let quantity = item.quantity.ok_or_else(|| FieldError::new(format!("items[{idx}].quantity"), "is required"))?;
                let quantity = Quantity::parse(quantity).map_err(|msg| FieldError::new(format!("items[{idx}].quantity"), msg))?;
                Ok(NewOrderLine { product_id, quantity })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { lines })
    }
}

/// Where an order is in its life. Transitions only move forward (see `can_move_to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Accepted,
    Processing,
    Completed,
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "ACCEPTED",
            Self::Processing => "PROCESSING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ACCEPTED" => Some(Self::Accepted),
            "PROCESSING" => Some(Self::Processing),
            "COMPLETED" => Some(Self::Completed),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Processing => 1,
            Self::Completed | Self::Failed => 2,
        }
    }

    /// Redelivered events must never move an order backwards (COMPLETED never becomes PROCESSING).
    pub fn can_move_to(self, next: Self) -> bool {
        next.rank() > self.rank()
    }

    pub fn is_final(self) -> bool {
        self.rank() == 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(items: Vec<(&str, i64)>) -> OrderRequest {
        OrderRequest {
            items: Some(items.into_iter().map(|(p, q)| OrderRequestItem { product_id: Some(p.into()), quantity: Some(q) }).collect()),
        }
    }

    #[test]
    fn quantity_of_zero_and_101_are_rejected_naming_the_field() {
        for q in [0, 101, -1] {
            let err = NewOrder::try_from(request(vec![("p", 1), ("p", q)])).unwrap_err();
            assert_eq!(err.field, "items[1].quantity");
        }
        assert!(NewOrder::try_from(request(vec![("p", 1), ("p", 100)])).is_ok());
    }

    #[test]
    fn empty_missing_and_too_many_items_are_rejected() {
        assert_eq!(NewOrder::try_from(request(vec![])).unwrap_err().field, "items");
        assert_eq!(NewOrder::try_from(OrderRequest { items: None }).unwrap_err().field, "items");
        assert!(NewOrder::try_from(request(vec![("p", 1); 50])).is_ok());
        let err = NewOrder::try_from(request(vec![("p", 1); 51])).unwrap_err();
        assert_eq!(err.field, "items");
        assert!(err.message.contains("at most 50"));
    }

    #[test]
    fn status_only_moves_forward() {
        use OrderStatus::*;
        assert!(Accepted.can_move_to(Processing));
        assert!(Processing.can_move_to(Completed));
        assert!(Accepted.can_move_to(Failed));
        assert!(!Completed.can_move_to(Processing));
        assert!(!Completed.can_move_to(Failed));
        assert!(!Processing.can_move_to(Processing));
        for s in [Accepted, Processing, Completed, Failed] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
    }
}
