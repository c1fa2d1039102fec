-- An agent's services are those of its latest report, which agents.latest_report already
-- holds: the copy in agent_services cost a delete and an insert per agent per batch (a
-- third of the read model's live apply) and is now read from the report instead.
DROP TABLE agent_services;
