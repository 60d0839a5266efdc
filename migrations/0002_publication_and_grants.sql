-- Least privilege (DESIGN.md, Write model): the publication the projector
-- streams, and the per-database rights of the two service roles.
--
-- Migrations run as the tables' owner (a superuser in the local stack and in
-- tests). The services do not: the command API's role may read and write rows
-- but not change the schema; the projector's role may only replicate and read
-- the published tables.

-- The projector's publication (its default `--publication`). It belongs here,
-- beside the tables: CREATE PUBLICATION ... FOR TABLE needs ownership of every
-- table, which the projector's role must not have. A table the projector
-- comes to need is added by a later migration (ALTER PUBLICATION ... ADD
-- TABLE, with GRANT SELECT to the projector's role), and to the projector's
-- own list in projector/src/source.rs, which checks it at start.
--
-- A database whose projector ran before this migration already has the
-- publication (the projector used to create it on first start): set its
-- table list instead of failing.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'cqrs_projector') THEN
        ALTER PUBLICATION cqrs_projector
            SET TABLE courses, sale_events, sale_event_courses, orders, order_items, enrollments;
    ELSE
        CREATE PUBLICATION cqrs_projector
            FOR TABLE courses, sale_events, sale_event_courses, orders, order_items, enrollments;
    END IF;
END $$;

-- The roles are cluster-wide and carry credentials, so they are not created
-- here: deploy/roles.sql creates them once per cluster, before the migrations
-- run (deploy/local.sh does both in that order). Table rights are per database,
-- so they are granted here, next to the tables they name; a database without
-- the roles (a bare test server) is migrated all the same, and a notice says
-- what was skipped.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'course_sales_command') THEN
        -- Rows only: no TRUNCATE, no REFERENCES, no DDL (PostgreSQL 15 and
        -- later give PUBLIC no CREATE on schema public). Identity columns
        -- need no sequence grant.
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public
            TO course_sales_command;
        -- Tables later migrations create (as this same owner) get the same
        -- rights, so a new table cannot be forgotten.
        ALTER DEFAULT PRIVILEGES IN SCHEMA public
            GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO course_sales_command;
        -- sqlx's bookkeeping is the migrator's business, not the service's.
        REVOKE ALL ON _sqlx_migrations FROM course_sales_command;
    ELSE
        RAISE NOTICE 'role course_sales_command does not exist: no grants (run deploy/roles.sql before migrating)';
    END IF;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'course_sales_projector') THEN
        -- Exactly the published tables, for the initial build from the slot's
        -- snapshot: no default privileges, so a new table stays unreadable
        -- until it is published. Writes are never granted. REPLICATION is a
        -- role attribute (deploy/roles.sql); heartbeats
        -- (pg_logical_emit_message), pg_current_wal_lsn() and
        -- pg_replication_slots need no grant.
        GRANT SELECT ON courses, sale_events, sale_event_courses, orders, order_items, enrollments
            TO course_sales_projector;
    ELSE
        RAISE NOTICE 'role course_sales_projector does not exist: no grants (run deploy/roles.sql before migrating)';
    END IF;
END $$;
