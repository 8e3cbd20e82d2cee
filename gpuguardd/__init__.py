"""gpuguardd: node agent for multi-tenant GPU hosts."""

__version__ = "0.1.0"
