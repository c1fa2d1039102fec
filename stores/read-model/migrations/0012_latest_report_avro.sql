-- The latest report as its Avro single-object encoding (schema fingerprint, datum) instead
-- of JSON text: about a third of the bytes, and written without a JSON encoder. Rows
-- written before keep their JSON in latest_report (read when latest_report_avro is NULL);
-- a row's next report writes the Avro column and clears the JSON one. BYTEA is PostgreSQL's
-- binary type; SQLite stores the blob as it is.
ALTER TABLE agents ADD COLUMN latest_report_avro BYTEA;
