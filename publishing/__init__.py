"""Write-audit-publish: how every published table reaches production (a library, not a resource).

``wap`` stages a candidate version, runs blocking audits and swaps it in atomically;
``redis_hash`` is the extra publish target for tables also served from a Redis hash.
"""
