"""Local development services: the Kafka broker and the LM server."""
