-- A command's progress chunks (fleet.commands.v1 PROGRESS), in the agent's order
-- (`sequence`, from 1), as they arrive: what `GET /api/v1/commands/{id}/output` and
-- `/stream` serve. Bounded per command by the projection: each stream keeps at most the
-- bytes of a result's output (fleet_schemas::api::MAX_COMMAND_OUTPUT_BYTES) and a command
-- at most MAX_STORED_CHUNKS rows; later chunks are dropped (`bytes` is the chunk's
-- length, summed for that bound). Portable DDL as in 0001: TEXT, BIGINT only.

CREATE TABLE command_output (
    command_id TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    stream     TEXT NOT NULL,
    chunk      TEXT NOT NULL,
    bytes      BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (command_id, sequence)
);
