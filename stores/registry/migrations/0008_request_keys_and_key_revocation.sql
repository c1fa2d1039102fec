-- Idempotency keys of operator requests, and revocation of single API keys (registry tables,
-- not projected: a read-model rebuild must keep them).
--
-- Portable like 0002 (TEXT and BIGINT only, µs timestamps).
--   * idempotency_keys: the id an `Idempotency-Key` names (a command id, a rule id: UUIDv5 of
--     the scope and the key) with the SHA-256 of the canonical request that first used it (64
--     lowercase hex digits). A reuse with another request is refused; rows are kept (a few
--     bytes per keyed request), so a key never names two different requests.
--   * user_api_keys.revoked_at: when the key was revoked (NULL: it works while its user is
--     enabled). A revoked key is kept for the listing and the audit trail.

CREATE TABLE idempotency_keys (
    id           TEXT NOT NULL PRIMARY KEY,
    request_hash TEXT NOT NULL CHECK (length(request_hash) = 64),
    created_at   BIGINT NOT NULL
);

ALTER TABLE user_api_keys ADD COLUMN revoked_at BIGINT;
