"""mailaudit: outbound-mail audit log and disclosure detector."""
__version__ = "0.1.0"
