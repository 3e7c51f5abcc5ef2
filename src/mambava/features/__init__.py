"""MAE visual features: a timm ViT encoder, pretrained as a masked autoencoder, fine-tuned on
frame-level valence/arousal with its first blocks frozen, and run over every frame.

    mae.py       encoder (timm VisionTransformer), MAE decoder, checkpoint loading
    frames.py    face frames as normalised tensors (shared by the three stages)
    pretrain.py  the `mae_pretrain` stage
    finetune.py  the `mae_finetune` stage
    extract.py   the `features` stage and the per-video store (load_features)
"""
