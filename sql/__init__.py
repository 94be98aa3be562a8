"""The ledger's storage: SQLAlchemy Core tables, the store, and the MySQL DDL."""
