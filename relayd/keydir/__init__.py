"""The relay's key directory for end-to-end encryption (PROTOCOL.md, "Key directory").

``directory``: the stored prekeys; ``requests``: the client requests;
``remote``: asking federation peers for ids this relay does not know;
``service``: the wiring into the daemon.
"""
