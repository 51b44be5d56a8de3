//! Diesel table definitions, kept by hand in step with `migrations/`.

diesel::table! {
    products (id) {
        id -> Text,
        name -> Text,
        price_cents -> BigInt,
        currency -> Text,
        available -> Bool,
    }
}

diesel::table! {
    orders (correlation_id) {
        correlation_id -> Uuid,
        user_id -> Text,
        status -> Text,
        order_number -> Nullable<BigInt>,
        failure_reason -> Nullable<Text>,
        total_cents -> BigInt,
        currency -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    order_lines (correlation_id, line_no) {
        correlation_id -> Uuid,
        line_no -> Integer,
        product_id -> Text,
        quantity -> Integer,
        unit_price_cents -> BigInt,
    }
}

diesel::table! {
    idempotency_keys (user_id, key) {
        user_id -> Text,
        key -> Text,
        request_hash -> Text,
        correlation_id -> Uuid,
        response_body -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> BigInt,
        event_id -> Uuid,
        routing_key -> Text,
        payload -> Text,
        created_at -> Timestamptz,
        traceparent -> Nullable<Text>,
    }
}

diesel::joinable!(order_lines -> orders (correlation_id));
diesel::joinable!(order_lines -> products (product_id));
diesel::allow_tables_to_appear_in_same_query!(products, orders, order_lines, idempotency_keys, outbox);
