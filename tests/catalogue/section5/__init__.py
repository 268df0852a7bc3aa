"""Catalogue of Section 5 — Persona shifts from finetuning: one module per exercise."""
