"""Feature-based terms: the student mimics intermediate representations of the teacher."""
