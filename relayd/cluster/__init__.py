"""Cluster mode (``[cluster]``): several relayd nodes serve one relay through
an engine (NATS JetStream); see docs/OPERATIONS.md §Cluster."""


def build_cluster(daemon, tcp):
    """Wire the engine link and the node: the node becomes the router's journal
    (the node's own journal behind it), shares key claims and bans (and
    persistent room memberships, through the journal), refuses sends while
    unlinked, and federates as one relay when ``[federation]`` is on."""
    import os
    from relayd.cluster.handover import FILE_NAME, Handover
    from relayd.cluster.link import EngineLink
    from relayd.cluster.node import ClusterNode
    from relayd.cluster.ownership import SharedOwnership
    s = daemon.settings
    link = EngineLink(daemon.reactor, s.cluster.engine,
                      "relayd %s/%s" % (s.relay.id, s.cluster.node), timeout=s.cluster.timeout)
    link.setServiceParent(daemon)
    handover = Handover(os.path.join(s.relay.data_dir, FILE_NAME), daemon.file_pool,
                        daemon.reactor)
    handover.setServiceParent(daemon)
    node = ClusterNode(s.cluster, s.relay.id, daemon.router, link, daemon.journal,
                       daemon.reactor, daemon.registry, mailbox_ttl=s.mailbox.ttl,
                       handover=handover)
    daemon.router.journal = node
    daemon.router.ownership = SharedOwnership(daemon.router.ownership)
    daemon.router.ownership.lost.append(lambda peer_id: daemon.router.kick(
        peer_id, "another key claimed this id first on another node", code="id_owned"))
    node.share_ownership(daemon.router.ownership)
    node.share_guard(daemon.guard)
    node.setServiceParent(daemon)
    daemon.cluster = node
    if daemon.federation is not None:
        from relayd.cluster.federation import build_leader
        build_leader(daemon, node)
    if tcp is not None:
        tcp.send_checks.append(node.refusal)
