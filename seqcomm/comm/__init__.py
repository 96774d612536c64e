"""Message generators: SeqComm-DFL's sequential messenger and the communication baselines
(docs/method.md §2 and §5)."""

from seqcomm.comm.base import Communication, MessageOutput, NoComm
from seqcomm.comm.commnet import CommNet
from seqcomm.comm.messages import MessageEncoder, masked_attention, straight_through_gumbel
from seqcomm.comm.ordering import Ordering, guidance_potential, order_entropy
from seqcomm.comm.return_gap import ReturnGapObjective
from seqcomm.comm.rgmcomm import (
    Eq13Objective,
    RGMComm,
    average_cosine_distance,
    clustering_loss,
    return_gap_bound,
)
from seqcomm.comm.stackelberg import SeqCommMessenger
from seqcomm.comm.tarmac import TarMAC

__all__ = [
    "CommNet",
    "Communication",
    "Eq13Objective",
    "MessageEncoder",
    "MessageOutput",
    "NoComm",
    "Ordering",
    "RGMComm",
    "ReturnGapObjective",
    "SeqCommMessenger",
    "TarMAC",
    "average_cosine_distance",
    "clustering_loss",
    "guidance_potential",
    "masked_attention",
    "order_entropy",
    "return_gap_bound",
    "straight_through_gumbel",
]
