"""The database: its schema (`schema`) and the engines, sessions and migrations (`engine`)."""
