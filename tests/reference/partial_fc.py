"""Independent PyTorch reference of arcface_torch's PartialFC_V2 (partial_fc_v2.py), its ranks
simulated in one process, in float64.

Reads JSON on stdin: {"embeddings": [W*B*E], "weight": [C*E] (the whole centre matrix),
"labels": [W*B], "margins": [m1, m2, m3], "scale": s, "world": W, "rows_per_rank": B,
"embedding_size": E, "ranges": [[start, len] per rank], "indices": [[sampled local centres] per
rank], "threshold": T (optional)}. Writes {"loss", "embedding_grads": [per rank, B*E], "weight_grads": [per rank, len*E]}.

Follows PartialFC_V2.forward: embeddings and labels all-gathered (concatenated in rank order);
on each rank labels outside its range set to -1, the others made local and mapped into the
sampled index with torch.searchsorted; logits = linear(normalize(embeddings),
normalize(weight[index])) clamped to [-1, 1]; the margin on the target; times s. DistCrossEntropy
is the softmax cross-entropy over all ranks' columns, which is what its all-reduced max and sum
compute: here the ranks' logits are concatenated and torch's cross_entropy takes the mean.
The margin is differentiated by autograd (cos(arccos(c) + m2) with the seed's th/mm fallback;
c - m3 for CosFace), not edited under no_grad as arcface_torch's CombinedMarginLoss does.
With "threshold" > 0, CombinedMarginLoss's interclass filtering: under no_grad, a mask of the
logits above the threshold, the targets left out of it, and the logits multiplied by 1 - mask.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F


def margin(c, m1, m2, m3):
    if m1 == 1.0 and m2 == 0.0:
        return c - m3
    if m1 == 1.0:
        th = math.cos(math.pi - m2)
        mm = math.sin(math.pi - m2) * m2
        phi = torch.cos(torch.arccos(c) + m2)
        return torch.where(c > th, phi, c - mm) - m3
    theta = torch.arccos(c)
    return torch.cos(torch.clamp(m1 * theta + m2, max=math.pi)) - m3


def main():
    q = json.load(sys.stdin)
    world, rows, e = q["world"], q["rows_per_rank"], q["embedding_size"]
    m1, m2, m3 = q["margins"]
    s = q["scale"]
    threshold = q.get("threshold", 0.0)
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    embeddings_all = t(q["embeddings"]).view(world * rows, e)
    weight = t(q["weight"]).view(-1, e)
    labels_all = torch.tensor(q["labels"], dtype=torch.long)

    local_embeddings = [embeddings_all[r * rows:(r + 1) * rows].clone().requires_grad_() for r in range(world)]
    # AllGather: every rank sees the concatenation (its backward sums each rank's share).
    embeddings = torch.cat(local_embeddings)
    shards, rank_logits, columns = [], [], []
    offset = 0
    for r in range(world):
        start, length = q["ranges"][r]
        shard = weight[start:start + length].clone().requires_grad_()
        index = torch.tensor(q["indices"][r], dtype=torch.long)
        labels = labels_all.clone().view(-1, 1)
        positive = (start <= labels) & (labels < start + length)
        labels[~positive] = -1
        labels[positive] -= start
        labels[positive] = torch.searchsorted(index, labels[positive])
        logits = F.linear(F.normalize(embeddings), F.normalize(shard[index])).clamp(-1, 1)
        rows_here = torch.where(labels.view(-1) != -1)[0]
        cols_here = labels[rows_here].view(-1)
        if threshold > 0:
            with torch.no_grad():
                dirty = (logits > threshold).double()
                dirty[rows_here, cols_here] = 0.0
            logits = logits * (1.0 - dirty)
        target = margin(logits[rows_here, cols_here], m1, m2, m3)
        logits = logits.index_put((rows_here, cols_here), target) * s
        shards.append(shard)
        rank_logits.append(logits)
        col = torch.full((world * rows,), -1, dtype=torch.long)
        col[rows_here] = cols_here + offset
        columns.append(col)
        offset += index.numel()
    target_column = torch.stack(columns).max(dim=0).values
    assert (target_column >= 0).all(), "every label is on some rank"
    loss = F.cross_entropy(torch.cat(rank_logits, dim=1), target_column)
    loss.backward()
    json.dump(
        {
            "loss": loss.item(),
            "embedding_grads": [x.grad.flatten().tolist() for x in local_embeddings],
            "weight_grads": [w.grad.flatten().tolist() for w in shards],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
