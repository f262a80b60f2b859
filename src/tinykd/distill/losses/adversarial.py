"""Adversarial terms: a discriminator tells teacher from student outputs and the student learns to fool it."""
