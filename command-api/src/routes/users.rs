//! `POST /v1/users`: a new buyer, whose company the projector tallies per
//! course.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::db::commit_lsn;
use crate::error::{violates, ApiError, BodyRefused, ErrorBody, FieldErrors, Unavailable};
use crate::extract::AppJson;
use crate::routes::{reference, written, AppState};
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::schema::Type;

/// Longest email accepted, in characters as sent (the RFC 5321 path limit).
const EMAIL_MAX_CHARS: usize = 254;
/// Longest name or company accepted, in characters.
const NAME_MAX_CHARS: usize = 200;

/// A new buyer. Text is stored trimmed; limits count the text as sent.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    #[schema(schema_with = email_schema)]
    email: String,
    #[schema(schema_with = name_schema)]
    name: String,
    #[serde(default)]
    #[schema(schema_with = company_schema)]
    company: Option<String>,
}

fn email_schema() -> utoipa::openapi::Object {
    reference::email(
        EMAIL_MAX_CHARS,
        "Unique, compared case-insensitively: `local@domain`, at most 254 characters.",
    )
}

fn name_schema() -> utoipa::openapi::Object {
    reference::required_text(NAME_MAX_CHARS, "1 to 200 characters, not blank.")
}

fn company_schema() -> utoipa::openapi::Object {
    reference::text(
        Some(NAME_MAX_CHARS),
        "Where the user works (at most 200 characters); blank or null counts as none.",
    )
    .schema_type(
        [Type::String, Type::Null]
            .into_iter()
            .collect::<SchemaType>(),
    )
    .build()
}

/// A user that passed validation: trimmed, and `company` absent rather than blank.
struct NewUser {
    email: String,
    name: String,
    company: Option<String>,
}

impl TryFrom<CreateUser> for NewUser {
    type Error = ApiError;

    fn try_from(request: CreateUser) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::default();
        let email = request.email.trim().to_owned();
        match email.split_once('@') {
            _ if request.email.chars().count() > EMAIL_MAX_CHARS => errors.add(
                "email",
                format!("must be at most {EMAIL_MAX_CHARS} characters"),
            ),
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !email.chars().any(|c| c.is_whitespace() || c.is_control()) => {}
            _ => errors.add("email", "must be an email address such as name@example.com"),
        }
        let name = request.name.trim().to_owned();
        errors.storable("name", &name);
        if name.is_empty() {
            errors.add("name", "must not be empty");
        } else if request.name.chars().count() > NAME_MAX_CHARS {
            errors.add(
                "name",
                format!("must be at most {NAME_MAX_CHARS} characters"),
            );
        }
        if request
            .company
            .as_ref()
            .is_some_and(|company| company.chars().count() > NAME_MAX_CHARS)
        {
            errors.add(
                "company",
                format!("must be at most {NAME_MAX_CHARS} characters"),
            );
        }
        let company = request
            .company
            .map(|company| company.trim().to_owned())
            .filter(|company| !company.is_empty());
        if let Some(company) = &company {
            errors.storable("company", company);
        }
        errors.into_result()?;
        Ok(NewUser {
            email,
            name,
            company,
        })
    }
}

/// A buyer as stored.
#[derive(Serialize, sqlx::FromRow, ToSchema)]
struct User {
    id: i64,
    email: String,
    name: String,
    company: Option<String>,
    created_at: DateTime<Utc>,
}

/// Create a user.
///
/// 409 `email_taken` when the email, compared case-insensitively, belongs to
/// someone else.
#[utoipa::path(
    post,
    path = "/v1/users",
    operation_id = "create_user",
    tag = "users",
    request_body = CreateUser,
    responses(
        (status = 201, description = "The new user.", body = User,
            headers(("X-Commit-Lsn" = String, description = "Read-your-writes token: an LSN at or after the commit."))),
        (status = 409, description = "`email_taken`.", body = ErrorBody),
        (status = 422, description = "`validation_failed`, with `fields`.", body = ErrorBody),
        BodyRefused,
        Unavailable,
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    AppJson(request): AppJson<CreateUser>,
) -> Result<Response, ApiError> {
    let user = NewUser::try_from(request)?;
    let mut conn = state.pool.acquire().await?;
    // One statement, committed as it completes.
    crate::deadline::committing();
    let created: User = sqlx::query_as(
        "INSERT INTO users (email, name, company) VALUES ($1, $2, $3) \
         RETURNING id, email, name, company, created_at",
    )
    .bind(&user.email)
    .bind(&user.name)
    .bind(&user.company)
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| {
        if violates(&err, "users_email_key") {
            ApiError::EmailTaken
        } else {
            ApiError::Database(err)
        }
    })?;
    // A single statement commits when it returns: the LSN read now is past it.
    let lsn = commit_lsn(&mut conn).await;
    Ok(written(StatusCode::CREATED, lsn, &created))
}
