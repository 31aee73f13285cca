"""Alembic migrations for the store (``env.py``, ``versions/``).

Run them with :func:`jitgate.store.migrate`; ``alembic.ini`` here is only for
developers writing a new revision (see its header).
"""
