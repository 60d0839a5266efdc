-- The write model: the truth, in PostgreSQL. The projector derives every read
-- view from these tables through logical replication.
--
-- Rules kept here (DESIGN.md):
--   * facts are inserted, not counted in place: there is no counter column
--     that a write increments (student counts are projections);
--   * the heavy course HTML lives in `courses` but no list path selects it;
--   * event seats are one row per seat, claimed with FOR UPDATE SKIP LOCKED,
--     so no single row is hot during a sale.

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text        NOT NULL,
    name        text        NOT NULL,
    -- Where the user works; NULL when not given. Copied onto each enrollment
    -- so the projector can tally companies without a lookup.
    company     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique case-insensitively.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE courses (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title             text        NOT NULL,
    summary           text        NOT NULL,
    -- Tens of KB of HTML: TOASTed out of line; selected only by the course page.
    description_html  text        NOT NULL,
    category          text        NOT NULL,
    instructor        text        NOT NULL,
    price_krw         bigint      NOT NULL CHECK (price_krw >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX courses_category_idx ON courses (category);

CREATE TABLE sale_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text        NOT NULL,
    -- The event runs in the half-open window [starts_at, ends_at).
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL,
    discount_percent  integer     NOT NULL CHECK (discount_percent BETWEEN 0 AND 100),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);

CREATE TABLE sale_event_courses (
    event_id    bigint  NOT NULL REFERENCES sale_events (id),
    course_id   bigint  NOT NULL REFERENCES courses (id),
    -- NULL: unlimited seats.
    seat_limit  integer CHECK (seat_limit >= 0),
    PRIMARY KEY (event_id, course_id)
);
CREATE INDEX sale_event_courses_course_idx ON sale_event_courses (course_id);

-- One row per limited seat. A buyer claims a free seat row with
-- FOR UPDATE SKIP LOCKED, so concurrent buyers never wait on one another and
-- never share a row; a cancelled order sets its seats' order_id back to NULL.
CREATE TABLE event_seats (
    event_id   bigint  NOT NULL,
    course_id  bigint  NOT NULL,
    seat_no    integer NOT NULL,
    order_id   bigint,
    PRIMARY KEY (event_id, course_id, seat_no),
    FOREIGN KEY (event_id, course_id) REFERENCES sale_event_courses (event_id, course_id)
);
CREATE INDEX event_seats_free_idx ON event_seats (event_id, course_id) WHERE order_id IS NULL;
CREATE INDEX event_seats_order_idx ON event_seats (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE orders (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id),
    event_id      bigint      REFERENCES sale_events (id),
    status        text        NOT NULL CHECK (status IN ('completed', 'cancelled')),
    total_krw     bigint      NOT NULL CHECK (total_krw >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    cancelled_at  timestamptz
);
CREATE INDEX orders_user_idx ON orders (user_id);

CREATE TABLE order_items (
    order_id   bigint NOT NULL REFERENCES orders (id),
    course_id  bigint NOT NULL REFERENCES courses (id),
    price_krw  bigint NOT NULL CHECK (price_krw >= 0),
    PRIMARY KEY (order_id, course_id)
);

-- Enrollments are insert-only facts; revoking one sets revoked_at once.
CREATE TABLE enrollments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id),
    course_id   bigint      NOT NULL REFERENCES courses (id),
    order_id    bigint      REFERENCES orders (id),
    event_id    bigint      REFERENCES sale_events (id),
    -- The user's company at enrollment time (users' companies never change).
    company     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
-- At most one active enrollment per user and course.
CREATE UNIQUE INDEX enrollments_active_key ON enrollments (user_id, course_id) WHERE revoked_at IS NULL;
CREATE INDEX enrollments_course_idx ON enrollments (course_id);
CREATE INDEX enrollments_order_idx ON enrollments (order_id) WHERE order_id IS NOT NULL;
-- The projector needs the old row of a revocation to know what it undoes.
ALTER TABLE enrollments REPLICA IDENTITY FULL;

-- Checkout idempotency: one row per (user, key), inserted in the order's own
-- transaction, so concurrent retries serialize on the primary key and a
-- failed attempt leaves nothing behind.
CREATE TABLE idempotency_keys (
    user_id       bigint      NOT NULL,
    key           text        NOT NULL,
    request       jsonb       NOT NULL,
    response      jsonb,
    status_code   integer,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
