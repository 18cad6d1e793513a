"""Backup and restore of a whole control plane: `kaon backup create | verify | restore`.

A backup is one file that holds, encrypted, everything a control plane needs to come
back somewhere else: every row of the database (a consistent snapshot, taken while the
server writes), the files of ``KAON_HOME`` that hold state (run folders with logs and run
records, checkpoints, code snapshots, the key that derives job tokens), and every value of
the artifact store, copied as stored (still sealed by their workspaces' data keys).

It never holds the master key. The data keys it holds are rows of ``workspace_keys``,
wrapped by the master key, and the archive itself is sealed with a fresh backup key,
also wrapped by the master key: a backup without the master key is noise, and the master
key is kept apart from backups on purpose (docs/data.md, "Backup and restore").

    format.py    the file format and every decision about it (pure: bytes in, bytes out)
    archive.py   the encrypted, chunked, checksummed file: writer and reader
    database.py  rows out of SQLite or PostgreSQL and back into either
    home.py      the state files of KAON_HOME and the artifact store
    run.py       create, verify, restore: the steps in order
    __main__.py  the local admin command the CLI runs (``python -m kaon.server.backup``)

These run beside the database, like pg_dump, not through the API: a restore happens
when no control plane runs yet.
"""
