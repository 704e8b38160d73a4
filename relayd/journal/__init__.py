"""The journal: an append-only, segmented log of checksummed, sequenced records.

``record`` frames a record (``<seq> <crc32> <json>``), ``segments`` names
and finds the files, ``replay`` reads them back at start-up (checking every
record and every seq), ``writer`` owns the open segment on the file thread,
``commit`` batches appends on the reactor thread, ``retention`` chooses what
to prune, ``checkpoint`` saves and loads the state replay rebuilds, and
``service.Journal`` ties them into a Twisted service.
"""
