"""Every Prefect task of the project, each wrapping the library (`emotionclip`) once;
`flows/` composes them.

    dataset      build-tv-dataset: one task per stage (search, download, import, words,
                 frames, sentences, sentiment, humans, clips, manifests, card)
    training     pretrain: validate the inputs, train (loss curve, configuration, probe)
    evaluation   linear-probe: features per split, probe, results table, samples
    ablation     the ablation flow's planning, re-filter and comparison
    mission      build-train-evaluate: each step a deployment run linked to the parent
    limits       the global GPU and YouTube limits every run shares
    runners      a batch's task runner (threads, processes, Dask); waiting for batch runs
    progress     progress artifacts fed by the library's progress trackers
"""
