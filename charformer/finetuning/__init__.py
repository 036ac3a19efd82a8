"""The fine-tuning toolbox: methods against overfitting with few labels, for few- and zero-shot use of a
pretrained model, and against forgetting, each in its own module with its paper:

    adversarial.py   FGM and PGD on the character embeddings (Miyato et al. 2017; Madry et al. 2018)
    rdrop.py         R-Drop, two dropout passes that must agree (Liang et al. 2021)
    averaging.py     EMA of the weights, mean of the last N checkpoints (Polyak & Juditsky 1992)
    augment.py       label-preserving data augmentation for classification, NER and segmentation
    cloze.py         few-shot classification by cloze patterns and verbalisers (PET, Schick & Schütze 2021);
                     zero-shot use of the same (python -m charformer.zeroshot)
    ewc.py           elastic weight consolidation (Kirkpatrick et al. 2017)
    continual.py     classification tasks learned one after another: the earlier head kept, rehearsal, EWC
    distill.py       knowledge distillation of a tagger into a smaller or shortened student (Hinton et al. 2015)
    toolbox.py       their options and how finetune.py puts them around the objective of `charformer.train.fit`

Domain- and task-adaptive pretraining (Gururangan et al. 2020) is ``pretrain.py --init DIR``: more pretraining
of a body on new text.
"""
