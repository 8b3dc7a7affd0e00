"""Turning histories into things people read: terminal, HTML, Markdown and JSON post-mortems.

Pure rendering over ``reports.postmortem.PostMortem``: it reads, never samples.
"""
