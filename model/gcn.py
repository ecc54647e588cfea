"""The graph-convolutional recommender: a user tower, an item encoder and LightGCN propagation.

Why LGConv (LightGCN) rather than GCNConv or SAGEConv: the graph's job here is collaborative
smoothing, to pull items bought by the same shoppers together, and LightGCN showed that
the per-layer weight matrices and non-linearities of GCN/GraphSAGE add nothing to that
task but parameters and overfitting. LGConv has no weights, runs full-batch as one product
with torch's own sparse CSR matrix per layer (no pyg-lib or torch-sparse needed) and its
symmetric degree normalisation keeps the few very popular items from swamping every
neighbourhood.

Why the model stays inductive: user nodes carry no free id embedding. A user node starts
as the tower's encoding of the signup form, and the user vector that scores items is
always

    u = tower(form) + mean(history_embeddings[history items])

for training users and for a new request alike, so a shopper never seen in training is
scored without retraining, and serving needs only the tower's weights and precomputed
item arrays (docs/bundle.md).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch_geometric.nn import LGConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import to_torch_csr_tensor

# Padding value of history index tensors (a row of a batch has fewer history items than the widest).
NO_ITEM = -1


def propagation_matrix(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The graph as the LGConv layers propagate over it: LightGCN's symmetric-normalised adjacency
    D^-1/2 A D^-1/2 (no self-loops) of `edge_index` (both directions of every edge), a sparse CSR matrix.

    Built once per training run: LGConv's own normalisation would recompute the degrees at every
    layer of every step, and its message passing materialises a vector per edge (640k x 64 floats
    at the default size) where one sparse-dense product needs none; the product is ten times
    faster, forward and backward, and equal to 1e-6.
    """
    edge_index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=False)
    with warnings.catch_warnings():
        # torch's notices that sparse CSR support is "in beta" and that its invariants are not
        # checked: the product used here is its core, and PyG builds the matrix sorted.
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks are implicitly disabled")
        return to_torch_csr_tensor(edge_index.flip(0), weight, (num_nodes, num_nodes))


class _SymmetricProduct(torch.autograd.Function):
    """`matrix @ x` for a symmetric sparse `matrix`, whose gradient is `matrix @ grad` again.

    torch's own backward multiplies by the transpose, which it first converts back to CSR,
    sorting every edge: at the default size that was half of the propagation's time.
    """

    @staticmethod
    def forward(ctx, matrix: Tensor, x: Tensor) -> Tensor:
        ctx.matrix = matrix
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, torch.sparse.mm(ctx.matrix, grad)


class SymmetricLGConv(LGConv):
    """LGConv over a graph already normalised by propagation_matrix (symmetric: every edge both ways)."""

    def __init__(self):
        super().__init__(normalize=False)

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return _SymmetricProduct.apply(adj_t, x)


class UserTower(nn.Module):
    """An MLP from the encoded signup form to a user vector; exported layer by layer as tower_<i>."""

    def __init__(self, in_dim: int, hidden: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class ItemEncoder(nn.Module):
    """Initial item node vectors: an id embedding plus an embedding of each declared item feature's
    code (model/features.py: a category, or a number's quantile band).

    The feature embeddings let rarely bought items borrow from items like them (the shop: same
    category, size and price band), where their own id embedding has seen too few updates.
    """

    def __init__(self, features: Tensor, cardinalities: list[int], dim: int):
        super().__init__()
        offsets = torch.tensor([0] + cardinalities[:-1]).cumsum(0)
        self.register_buffer("features", features + offsets)
        self.ids = nn.Embedding(features.size(0), dim)
        self.feature_embeddings = nn.Embedding(sum(cardinalities), dim)
        nn.init.normal_(self.ids.weight, std=0.1)
        nn.init.normal_(self.feature_embeddings.weight, std=0.1)

    def forward(self) -> Tensor:
        return self.ids.weight + self.feature_embeddings(self.features).sum(dim=1)


class GraphRecommender(nn.Module):
    """Propagates user and item vectors over the user-item graph and scores items for user vectors."""

    def __init__(self, tower: UserTower, items: ItemEncoder, dim: int, num_layers: int):
        super().__init__()
        self.tower = tower
        self.items = items
        self.convs = nn.ModuleList([SymmetricLGConv() for _ in range(num_layers)])
        self.history = nn.Linear(dim, dim, bias=False)
        self.item_bias = nn.Parameter(torch.zeros(items.ids.num_embeddings))

    def item_embeddings(self, user_x: Tensor, graph: Tensor) -> Tensor:
        """Final item vectors: the mean of every propagation layer's output (LightGCN), item rows only.

        `graph` is propagation_matrix(edge_index, ...): node ids 0..len(user_x)-1 are the graph's
        users, the following ones the items.
        """
        x = torch.cat([self.tower(user_x), self.items()])
        layers = [x]
        for conv in self.convs:
            x = conv(x, graph)
            layers.append(x)
        return torch.stack(layers).mean(dim=0)[user_x.size(0):]

    def history_embeddings(self, item_embeddings: Tensor) -> Tensor:
        """What each item adds to the vector of a user who has it in their history."""
        return self.history(item_embeddings)

    def user_vectors(self, x: Tensor, history: Tensor, history_embeddings: Tensor) -> Tensor:
        """tower(x) plus the mean history embedding of each row's items (`history` padded with NO_ITEM)."""
        known = history != NO_ITEM
        gathered = history_embeddings[history.clamp(min=0)] * known.unsqueeze(-1)
        count = known.sum(dim=1, keepdim=True).clamp(min=1)
        return self.tower(x) + gathered.sum(dim=1) / count

    def scores(self, users: Tensor, item_embeddings: Tensor) -> Tensor:
        """Scores of every item for every user vector: item_embeddings @ u + item_bias."""
        return users @ item_embeddings.T + self.item_bias
