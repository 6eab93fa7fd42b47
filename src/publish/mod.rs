//! Publish: the journal pushed to the plant, beside the pull API.
//!
//! A plant of many stations scales out through its message broker, not through the stations:
//! each station publishes every record once it is durable, and whatever sits behind the broker
//! (historians, a Kafka bridge, dashboards) takes it from there. Delivery is at-least-once:
//! a publisher follows the journal from a durable cursor and moves the cursor only after the
//! broker acknowledged, so a crash or a lost connection repeats records, never skips them.
//! Every payload carries its `seq`, so a subscriber drops repeats.

pub mod mqtt;
