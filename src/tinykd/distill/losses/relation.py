"""Relation-based terms: the student preserves relations between samples in the teacher's representations."""
