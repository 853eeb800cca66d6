"""Images and feature vectors as tokens of the encoder: ViT's patch embedding and m3tl's vector projection, each with a
learned position embedding, and a modality-type embedding on every token of a multimodal sequence.

An example's image patches and feature vectors are tokens after its text (modalities.py's layout). Their embedding
replaces the word + position + segment embedding of their rows, then every token of the sequence gets its modality's
row (text, image, features) added, and all go through the embeddings' LayerNorm and dropout, as text does; from there
on they are tokens like any other in every layer (EmBERT's task rows, Gated-BERT's gate and PALs included). A batch of
text alone never reaches this module: text problems compute exactly as without it.

The modules are shared by the problems that use them: one patch embedding per (channels, patch size), one projection
per feature width. They live under `bert.embeddings.inputs` and start fresh (BERT's N(0, 0.02), zero biases):

    bert.embeddings.inputs.modality_type_embeddings.weight           (3, H): text, image, features
    bert.embeddings.inputs.images.c{C}_p{P}.projection.weight        (H, C*P*P), .bias (H,): a flattened patch -> H
    bert.embeddings.inputs.images.c{C}_p{P}.position_embeddings.weight  (patches, H): patch n, row by row
    bert.embeddings.inputs.vectors.d{D}.projection.weight            (H, D), .bias (H,)
    bert.embeddings.inputs.vectors.d{D}.position_embeddings.weight   (max_features, H): vector n of an example

A patch is flattened channel by channel, row by row ((C, P, P), as a Conv2d's kernel), so the projection is ViT's
Conv2d with kernel = stride = P written as a linear layer (`conv_weight` gives it as one). Problems whose images have
different sizes share the position rows of their first patches. Pixels are scaled to [0, 1] and normalised with mean
0.5 and std 0.5 here, from the uint8 arrays the feature cache keeps.
"""
from functools import partial

from torch import nn

import modalities
import modeling

# Pixels arrive as uint8; scaled to [0, 1] by PIXEL_MAX, then normalised with ViT's mean and std of 0.5.
PIXEL_MAX = 255.0
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


def image_key(channels, patch_size):
    return f"c{channels}_p{patch_size}"


def vector_key(width):
    return f"d{width}"


class PatchEmbeddings(nn.Module):
    """An image's non-overlapping patches, each flattened and projected to the hidden size, plus a learned position
    embedding per patch: (B, C, H, W) uint8 -> (B, N, D), N = (H / P) (W / P) patches row by row."""

    def __init__(self, channels, patch_size, hidden_size, num_patches):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Linear(channels * patch_size ** 2, hidden_size)
        self.position_embeddings = nn.Embedding(num_patches, hidden_size)

    def forward(self, pixel_values):
        x = (pixel_values.float() / PIXEL_MAX - PIXEL_MEAN) / PIXEL_STD  # (B, C, H, W) in [-1, 1]
        B, C, H, W = x.shape
        P = self.patch_size
        patches = (x.view(B, C, H // P, P, W // P, P)  # (B, C, gh, P, gw, P)
                   .permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, P, P)
                   .reshape(B, (H // P) * (W // P), C * P * P))  # (B, N, C*P*P): each patch as a Conv2d kernel sees it
        return self.projection(patches) + self.position_embeddings.weight[:patches.shape[1]]  # (B, N, D)

    def conv_weight(self):
        """The projection as ViT's Conv2d weight (D, C, P, P) (kernel = stride = P): the same map."""
        P = self.patch_size
        return self.projection.weight.view(self.projection.out_features, -1, P, P)


class VectorEmbeddings(nn.Module):
    """Feature vectors projected to the hidden size, plus a learned position embedding per vector (m3tl's dense
    layer): (B, V, width) -> (B, V, D)."""

    def __init__(self, width, hidden_size, max_features):
        super().__init__()
        self.projection = nn.Linear(width, hidden_size)
        self.position_embeddings = nn.Embedding(max_features, hidden_size)

    def forward(self, vectors):
        return self.projection(vectors) + self.position_embeddings.weight[:vectors.shape[1]]


class InputEmbeddings(nn.Module):
    """The model's image and vector embeddings, for every problem of the run that has them, and the modality-type
    embedding."""

    def __init__(self, config, problems):
        super().__init__()
        H = config.hidden_size
        self.modality_type_embeddings = nn.Embedding(len(modalities.MODALITIES), H)
        patches, vectors = {}, {}  # module key -> (its shape, the most positions any of its problems needs)
        for problem in problems:
            if problem.image is not None:
                spec = problem.image
                key = image_key(spec.channels, spec.patch_size)
                most = max(patches.get(key, (None, 0))[1], spec.num_patches)
                patches[key] = ((spec.channels, spec.patch_size), most)
            if problem.vectors is not None:
                spec = problem.vectors
                key = vector_key(spec.width)
                vectors[key] = (spec.width, max(vectors.get(key, (None, 0))[1], spec.max_features))
        self.images = nn.ModuleDict({key: PatchEmbeddings(*shape, H, most) for key, (shape, most) in patches.items()})
        self.vectors = nn.ModuleDict({key: VectorEmbeddings(width, H, most) for key, (width, most) in vectors.items()})

    def forward(self, embeddings, inputs, token_index, packed):
        """embeddings: the word + position + segment embeddings, (N, H) packed or (B, T, H) padded (`packed`);
        inputs: modalities.batch_inputs of the batch; token_index (N,): the flat positions b * T + t of the real tokens.
        Returns the embeddings with the patches' and vectors' rows replaced and every token's modality row added."""
        H = embeddings.shape[-1]
        flat = embeddings.reshape(-1, H)  # (N, H), or (B*T, H)
        modality = inputs["modality_ids"].flatten()  # (B*T,)
        if packed:
            modality = modality[token_index]  # (N,)
        # The batch gives positions among the real tokens; padded, they sit at token_index's positions.
        place = (lambda index: index) if packed else (lambda index: token_index[index])
        if "pixel_values" in inputs:
            pixels = inputs["pixel_values"]  # (B', C, H, W)
            patches = self.images[image_key(pixels.shape[1], inputs["patch_size"])](pixels)  # (B', N, D)
            flat = flat.index_copy(0, place(inputs["patch_index"]), patches.reshape(-1, H).to(flat.dtype))
        if "vectors" in inputs:
            vectors = inputs["vectors"]  # (B, V, width)
            projected = self.vectors[vector_key(vectors.shape[-1])](vectors).reshape(-1, H)  # (B*V, D)
            flat = flat.index_copy(0, place(inputs["vector_index"]),
                                   projected[inputs["vector_rows"]].to(flat.dtype))
        flat = flat + self.modality_type_embeddings(modality)
        return flat.view(embeddings.shape)


def add_input_embeddings(model, problems):
    """Give a BertForMultiTask the image and vector embeddings its problems (in head order) need, freshly
    initialised, as `model.bert.embeddings.inputs`; a model of text problems is left as it is."""
    if any(modalities.has_inputs(problem) for problem in problems):
        inputs = InputEmbeddings(model.config, problems)
        inputs.apply(partial(modeling.init_weights, std=model.config.initializer_range))
        model.bert.embeddings.inputs = inputs
    return model
