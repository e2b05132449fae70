"""Curation of ImageNot and LAIONet from LAION metadata: the PyTorch side of the project.

Stages (each `python -m curation.<stage>`, all of them `python -m curation.run`) exchange files
only, inside one workdir that ends up being the `tfds build` manual dir of `tfds_imagenot/imagenot`:

    classes/   wordnet   candidate classes (WordNet 3.0 nouns) and the rule report
    match/     match     (sample, class) pairs from Aho-Corasick caption matching
    text_score/          + caption-to-class-text similarity (RoBERTa family)
    clip_score/          + image-to-class-text similarity (open_clip), optional
    manifest.parquet, classes.tsv   select
    images/    download  img2dataset webdataset shards, members named by manifest key
    diagnostics/         plots and markdown

This package never imports jax or imagenot_jax.
"""
