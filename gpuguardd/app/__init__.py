"""Composition root: builds hosts, engines and servers from a Config."""
