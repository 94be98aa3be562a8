"""Generated from proto/data.proto by proto/generate.py. Do not edit by hand."""
