-- The service roles (DESIGN.md, Write model: least privilege). Run as a
-- superuser, once per cluster and before the migrations, which grant these
-- roles their table rights in each database they migrate:
--
--   psql -h HOST -U postgres -d postgres -v ON_ERROR_STOP=1 -f deploy/roles.sql
--
-- deploy/local.sh runs it whenever it brings the stack up. It is idempotent
-- and safe when several runs race (parallel test processes): an existing role
-- is kept, and only an attribute that contradicts the design is corrected.
--
-- No passwords here: the local stack trusts 127.0.0.1, and elsewhere the
-- operator gives each role its credentials (ALTER ROLE ... PASSWORD, or a
-- certificate) the way the cluster's secrets are managed.
--
-- Attributes are not inherited through role membership, so each is set on
-- the login role itself.

-- The command API: reads and writes rows of the write model (granted by the
-- migrations), never replicates: a leaked command credential cannot stream
-- the database's changes or hold WAL back with a slot.
DO $$
BEGIN
    CREATE ROLE course_sales_command
        LOGIN NOREPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION
    -- Exists already; unique_violation when a concurrent run created it
    -- between this one's check and its insert.
    WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- The projector: REPLICATION for its slot and its replication connection,
-- SELECT on the published tables (granted by the migrations), nothing else.
-- Every other call it makes needs nothing more (checked on PostgreSQL 15):
-- pg_logical_emit_message (heartbeats), pg_current_wal_lsn() and
-- pg_replication_slots are open to any role, pg_drop_replication_slot to any
-- role with REPLICATION; so no pg_monitor.
DO $$
BEGIN
    CREATE ROLE course_sales_projector
        LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

-- A role made earlier by hand may carry more than the design allows. ALTER
-- only when something differs: two concurrent ALTERs of one role fail with
-- "tuple concurrently updated".
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'course_sales_command'
                 AND (NOT rolcanlogin OR rolreplication OR rolsuper OR rolcreatedb
                      OR rolcreaterole OR rolbypassrls)) THEN
        ALTER ROLE course_sales_command
            LOGIN NOREPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'course_sales_projector'
                 AND (NOT rolcanlogin OR NOT rolreplication OR rolsuper OR rolcreatedb
                      OR rolcreaterole OR rolbypassrls)) THEN
        ALTER ROLE course_sales_projector
            LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
END $$;
