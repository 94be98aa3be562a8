"""The operator's console: a command parser, a gRPC client, rich output, and the REPL."""
