"""Staged pipeline: stages with manifests, a runner that skips, resumes and never half-writes."""
