"""Validated configuration: the pydantic schema of every job (``schema``), dotted overrides (``overrides``) and the
plain defaults the command line shows without importing pydantic or torch (``defaults``)."""
