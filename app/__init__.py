"""Self-hosted fine-tuning service: the web application and what workers share with it."""
