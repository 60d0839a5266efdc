//! The read model, shared by the projector (writer) and the query API (reader):
//! the Redis key layout, the value codec, the shapes of the views, and where
//! the Redis holding them is (`REDIS_URL`: one Redis or a cluster).
//!
//! This crate is the only place that knows key names, hash fields and value
//! bytes, so writer and reader can never disagree on them.

pub mod aggregate;
mod codec;
mod keys;
mod lsn;
mod marker;
mod model;
mod redis;
mod settings;
pub mod watermark;

pub use codec::{
    decode, encode, encode_with, DecodeError, FORMAT_JSON, FORMAT_LZ4, LZ4_THRESHOLD,
    MAX_VIEW_BYTES,
};
pub use keys::{ranking_member, Keys, DEFAULT_KEY_PREFIX};
pub use lsn::{Lsn, ParseLsnError};
pub use marker::{GenerationMarker, Readable};
pub use model::{
    pick_sale, serve_course, serve_course_page, serve_stored_course_page, CourseCard, CoursePage,
    CourseStats, EventView, OrderItem, OrderView, Sale, ServeError, StoredPageError, TopCompany,
    VIEW_SCHEMA_VERSION,
};
pub use redis::{
    delete_matching, read_client, RedisUrl, RedisUrlError, DEFAULT_READ_TIMEOUT_MS, REDIS_URL_FORMS,
};
pub use settings::{RedisSettings, RedisSettingsError, DEFAULT_REDIS_URL};
