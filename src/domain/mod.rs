//! Pure business types: ids, orders and the events on the bus.
//! Nothing here does I/O or knows actix, diesel, redis or lapin; values are parsed
//! at the edges into these types and travel inward as such.

pub mod events;
pub mod ids;
pub mod order;

pub use events::{Event, EventKind};
pub use ids::{CorrelationId, EventId, IdempotencyKey, OrderNumber, UserId};
pub use order::{NewOrder, NewOrderLine, OrderRequest, OrderStatus, Quantity};
