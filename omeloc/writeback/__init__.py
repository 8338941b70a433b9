"""Write-back: a new channel into every image and level of a plate, crash-safe.

``plan`` (the preflight and :class:`WritePlan`), ``pixels`` (the Dask tasks that write the
pixels), ``protocol`` (:func:`add_channel`, :func:`recover`: the ordered phases),
``journal`` (raw metadata documents, rollback, completion), ``resume`` (keeping a killed
run's finished chunks), ``lock`` (the one-writer plate lock with its heartbeat).
"""

from omeloc.writeback.plan import WritePlan
from omeloc.writeback.protocol import AddChannelResult, add_channel, recover

__all__ = ["AddChannelResult", "WritePlan", "add_channel", "recover"]
