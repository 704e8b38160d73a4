"""The journal: an append-only, segmented JSONL message log.

``segments`` names and finds the files, ``replay`` reads them back at
start-up, ``writer`` owns the open segment on the file thread, ``commit``
batches appends on the reactor thread, ``retention`` chooses what to prune,
and ``service.Journal`` ties them into a Twisted service.
"""
