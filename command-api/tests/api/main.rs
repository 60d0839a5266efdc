//! Integration tests of the command API against a real PostgreSQL, one fresh
//! database per test.

mod admission;
mod courses;
mod errors;
mod events;
mod health;
mod helpers;
mod hot_rows;
mod large_carts;
mod orders;
mod overload;
mod seats;
mod sessions;
mod slow_clients;
mod switches;
mod users;
