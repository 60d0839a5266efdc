-- Emails are unique case-insensitively (SPEC, POST /v1/users) in every
-- script, not in ASCII alone. The first index compared lower(email) under the
-- database's own collation, which lowers only the letters it knows: under the
-- C locale (the local stack's, and a common server default) 'É@example.com'
-- and 'é@example.com' were two users. ICU's root collation lowers every
-- script, whatever the database's locale.
--
-- Built in the migration's transaction (CREATE INDEX CONCURRENTLY cannot
-- run in one): user sign-ups wait for the build, a few seconds per million
-- users. If existing rows already collide under the wider folding, the build
-- fails and names them: merge or rename those users, then migrate again.
--
-- An ICU upgrade may change case mappings; PostgreSQL then warns of a
-- collation version mismatch, and `REINDEX INDEX users_email_key` brings the
-- index in line. A server built without ICU (rare: Debian's, the PGDG
-- packages and the managed services have it) keeps the first index.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'und-x-icu') THEN
        CREATE UNIQUE INDEX users_email_folded ON users (lower(email COLLATE "und-x-icu"));
        DROP INDEX users_email_key;
        ALTER INDEX users_email_folded RENAME TO users_email_key;
    ELSE
        RAISE NOTICE 'no ICU collation on this server: emails stay unique by lower() under the database collation';
    END IF;
END $$;
