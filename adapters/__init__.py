"""Mail-path adapters (milter, smtplib drop-in, email-API converters): they sit beside the layers and may use ingest and detect."""
