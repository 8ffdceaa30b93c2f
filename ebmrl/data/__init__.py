"""Data: demo generator, and (later) ingest, frames, annotate, synthesize."""
