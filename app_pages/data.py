"""Data page: pick a built-in dataset, upload a table or choose an image folder tree, map columns or
folder levels to ranks, inspect the taxonomy (and, for images, a thumbnail grid per class)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import _shared as sh
from workbench import plots
from workbench.config import ConfigError
from workbench import data as data_module
from workbench.data import DataError
from workbench.taxonomy import TaxonomyError

LIBRARY_ERRORS = (ConfigError, DataError, TaxonomyError)
BUILTIN_INFO = {
    "synthetic": "Hierarchical Gaussian mixture: coarse classes are easier to separate than fine ones; labels "
                 "are nulled from the fine end (a sample null at a rank is null at every finer rank).",
    "ratdat": "Portal Project rodent survey (35,549 animals): taxa > genus > species from weight, hindfoot "
              "length, sex, plot type and month. Placeholder genera (\"Rodent\", \"Sparrow\", ...) and \"sp.\" "
              "are partial labels.",
    "olive": "Italian olive oils (572): region > area from 8 fatty acids. Fully labelled.",
    "animal_mnist": "Animal silhouettes (10,000 real 28x28 grey images, 1,000 per animal): class > order > family "
                    "> animal. Birds are labelled Aves at class only (1,000 real partial labels). Trains with "
                    "the resnet backbone.",
    "ratdat_sets": "The Portal rodent captures as sets: one sample is the animals of one species caught on one "
                   "plot in one month (sets of 1 to 20 captures, each with weight, hindfoot length and sex); "
                   "name taxa > genus > species from the set. Trains with the set_attention backbone.",
}
BUILTIN_RANKS = {name: list(ranks) for name, ranks in data_module.BUILTIN_RANKS.items()}  # one home: workbench.data
SOURCES = ["Built-in", "Upload a file", "Image folder"]
FOLDER_FROM = ["A folder on the server", "Upload a zip"]
from workbench.images import DEFAULT_IMAGE_SIZE  # noqa: E402 (one home: folder trees are resized to this)
st.title("Data")
st.caption("Choose what to train on. Labels form a taxonomy, coarse to fine; a missing (null) label at a "
           "rank is a *partial* label, not an error. The Train page uses the dataset chosen here.")

current = sh.data_section()
sh.init("d_source", {"file": "Upload a file", "images": "Image folder"}.get(current["NAME"], "Built-in"))
source = st.segmented_control("Source", SOURCES, key="d_source", required=True) or "Built-in"


def builtin_section() -> dict | None:
    names = [n for n in BUILTIN_INFO if n == "synthetic" or n in BUILTIN_RANKS]
    sh.init("d_name", current["NAME"] if current["NAME"] in names else names[0])
    name = st.selectbox("Dataset", names, key="d_name")
    st.caption(BUILTIN_INFO[name])
    data: dict = {"NAME": name}
    if name == "synthetic":
        syn = current.get("SYNTHETIC") if current["NAME"] == "synthetic" else sh.DEFAULT_DATA["SYNTHETIC"]
        syn = {**sh.DEFAULT_DATA["SYNTHETIC"], **(syn or {})}
        for key, value in (("d_n", int(syn["N"])), ("d_branching", ", ".join(map(str, syn["BRANCHING"]))),
                           ("d_nulls", ", ".join(f"{v:g}" for v in syn["NULL_RATES"])),
                           ("d_features", int(syn["NUM_FEATURES"])), ("d_noise", float(syn["NOISE"])),
                           ("d_imbalance", float(syn["IMBALANCE"])), ("d_seed", int(current.get("SEED", 0)))):
            sh.init(key, value)
        c1, c2, c3 = st.columns(3)
        n = c1.number_input("Samples (N)", 10, 500_000, step=1000, key="d_n")
        branching = c2.text_input("Branching per rank", key="d_branching",
                                  help="Children per node at each rank, coarse to fine: 3, 3, 3 gives 3 > 9 > 27 classes.")
        nulls = c3.text_input("Null rate per rank", key="d_nulls",
                              help="Fraction of samples whose label is missing at each rank (non-decreasing).")
        c1, c2, c3, c4 = st.columns(4)
        feats = c1.number_input("Features", 1, 1024, key="d_features")
        noise = c2.number_input("Noise (std)", 0.0, 20.0, step=0.25, key="d_noise")
        imbalance = c3.slider("Imbalance (Zipf exponent)", 0.0, 3.0, step=0.1, key="d_imbalance")
        seed = c4.number_input("Seed", 0, 10_000, key="d_seed")
        try:
            data["SYNTHETIC"] = {
                "N": int(n), "BRANCHING": sh.parse_numbers(branching, int, "Branching per rank"),
                "NUM_FEATURES": int(feats), "NOISE": float(noise),
                "NULL_RATES": sh.parse_numbers(nulls, float, "Null rate per rank"), "IMBALANCE": float(imbalance),
            }
        except ConfigError as e:
            st.error(sh.md_escape(e))
            return None
        data["SEED"] = int(seed)
    else:
        options = BUILTIN_RANKS[name]
        if st.session_state.get("d_ranks_builtin_for") != name:  # new dataset: all its ranks
            st.session_state["d_ranks_builtin"] = list(current.get("RANKS") or options) if current["NAME"] == name else options
            st.session_state["d_ranks_builtin_for"] = name
        chosen = st.multiselect("Ranks (coarse to fine)", options, key="d_ranks_builtin")
        if not chosen:
            st.error("Pick at least one rank.")
            return None
        data["RANKS"] = [r for r in options if r in chosen]
        if name in sh.SET_SOURCES:
            sh.init("d_max_set_builtin", int(current.get("MAX_SET_SIZE") or 0) if current["NAME"] == name else 0)
            cap = st.number_input("Largest set size (0 = no cap)", 0, 10_000, step=1, key="d_max_set_builtin",
                                  help="DATA.MAX_SET_SIZE: a longer set keeps a seeded subsample of this many elements.")
            data["MAX_SET_SIZE"] = int(cap) or None
    return data


def upload_section() -> dict | None:
    uploaded = st.file_uploader(
        f"CSV, TSV, TXT or Parquet (up to {sh.MAX_UPLOAD_MB} MB)", type=list(sh.UPLOAD_TYPES),
        max_upload_size=sh.MAX_UPLOAD_MB, key="d_upload",
        help="One row per sample: one column per rank (class names; empty = null) and numeric feature columns. "
             "Text files may be separated by commas, semicolons, tabs or '|' (detected from the first lines).",
    )
    path = None
    if uploaded is not None:
        try:
            path = sh.save_upload(sh.store_path().parent / "uploads", uploaded.name, uploaded.getvalue())
        except DataError as e:
            st.error(sh.md_escape(e))
            return None
    elif current["NAME"] == "file" and current.get("PATH"):
        path = current["PATH"]
        st.caption(f"Using the previously uploaded file `{Path(path).name}`.")  # the hash folder is not shown
    if path is None:
        st.info("Upload a table to map its columns to ranks and features.")
        return None
    stat = Path(path).stat()
    try:
        df = sh.read_columns(str(path), stat.st_size, stat.st_mtime_ns)
    except DataError as e:
        st.error(sh.md_escape(e))
        return None
    cols = [str(c) for c in df.columns]
    numeric = [str(c) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    text = [c for c in cols if c not in numeric]
    prev = current if current["NAME"] == "file" else {}
    st.caption(f"`{Path(path).name}`: {len(df):,} rows, {len(cols)} columns{sh.delimiter_note(path)}.")
    if st.session_state.get("d_file_for") != str(path):  # a new file: fresh column mapping
        st.session_state["d_file_for"] = str(path)
        st.session_state["d_ranks"] = [c for c in (prev.get("RANKS") or text[:3]) if c in cols]
        st.session_state["d_feats"] = [c for c in (prev.get("FEATURES") or numeric) if c in numeric]
        st.session_state["d_weight"] = "(none)"
        st.session_state["d_nullvals"] = ""
        st.session_state["d_group"] = prev.get("GROUP_BY") or "(none)"
    ranks = st.multiselect("Rank columns, coarse to fine (in the order you pick them)", cols, key="d_ranks")
    feature_options = [c for c in cols if c not in ranks]
    st.session_state["d_feats"] = [c for c in st.session_state.get("d_feats", []) if c in feature_options]
    features = st.multiselect("Feature columns (numeric; default: every numeric column)", feature_options,
                              key="d_feats")
    c1, c2 = st.columns(2)
    weight_options = ["(none)"] + [c for c in numeric if c not in ranks]
    if st.session_state.get("d_weight") not in weight_options:
        st.session_state["d_weight"] = "(none)"
    weight = c1.selectbox("Sample weight column (optional)", weight_options, key="d_weight")
    nullvals = c2.text_input("Extra null values (comma-separated)", key="d_nullvals",
                             help="Label strings that mean 'missing', besides empty cells. Default: empty, NaN, sp., unknown.")
    group_options = ["(none)"] + [c for c in cols if c not in ranks and c != weight]
    if st.session_state.get("d_group") not in group_options:
        st.session_state["d_group"] = prev.get("GROUP_BY") if prev.get("GROUP_BY") in group_options else "(none)"
    sh.init("d_max_set", int(prev.get("MAX_SET_SIZE") or 0))
    c1, c2 = st.columns(2)
    group = c1.selectbox("Group rows by column (optional: sets)", group_options, key="d_group",
                         help="DATA.GROUP_BY: rows sharing a value of this column form one sample, a set (several "
                              "views of one observation). Their labels must agree. Trains with set_attention.")
    max_set = c2.number_input("Largest set size (0 = no cap)", 0, 100_000, step=1, key="d_max_set",
                              disabled=group == "(none)",
                              help="DATA.MAX_SET_SIZE: a longer group keeps a seeded subsample of this many rows.")
    with st.expander("Preview of the file"):
        st.dataframe(df.head(20), hide_index=True)
    if not ranks:
        st.warning("Pick the rank columns, coarse to fine.")
        return None
    data = {"NAME": "file", "PATH": str(path), "RANKS": ranks,
            "FEATURES": [c for c in features if c not in (weight, group)] or None}
    if weight != "(none)":
        data["SAMPLE_WEIGHT"] = weight
    if group != "(none)":
        data["GROUP_BY"] = group
        data["MAX_SET_SIZE"] = int(max_set) or None
    extra = [v.strip() for v in nullvals.split(",") if v.strip()]
    if extra:
        data["NULL_VALUES"] = ["", "sp.", "unknown", *extra]
    return data


def image_folder_section() -> dict | None:
    """An image folder tree (each folder level one rank, coarse to fine): a path on the server or an uploaded zip."""
    prev = current if current["NAME"] == "images" else {}
    sh.init("d_img_from", FOLDER_FROM[0])
    where = st.radio("Where are the images?", FOLDER_FROM, key="d_img_from", horizontal=True)
    st.caption("A folder tree: each folder level below the root is one rank, coarse to fine "
               "(`Mammalia/Carnivora/Felidae/cat/0001.png`). An image higher up is labelled down to its folder's "
               "rank only: a partial label (`Aves/0007.png`). Hidden and non-image files are skipped.")
    path = None
    if where == FOLDER_FROM[0]:
        sh.init("d_img_path", prev.get("PATH") or "")
        typed = st.text_input("Folder path on the server", key="d_img_path", placeholder="/data/animals")
        if not typed.strip():
            st.info("Type the path of the tree's root folder (on the machine running the app).")
            return None
        folder = Path(typed.strip()).expanduser()
        if not folder.exists():
            st.error(sh.md_escape(f"{folder}: no such folder on the server"))
            return None
        if not folder.is_dir():
            st.error(sh.md_escape(f"{folder}: is a file, not a folder; give the root folder of the image tree"))
            return None
        path = folder.resolve()
    else:
        uploaded = st.file_uploader(
            f"A .zip of the folder tree (up to {sh.MAX_UPLOAD_MB} MB)", type=["zip"], max_upload_size=sh.MAX_UPLOAD_MB,
            key="d_img_zip", help="Zip the root folder (or its contents). Names are sanitised; members with "
                                  "absolute paths, '..' or symbolic links are refused.")
        if uploaded is not None:
            try:
                path = sh.extract_zip_upload(sh.store_path().parent / "uploads", uploaded.name, uploaded.getvalue())
            except DataError as e:
                st.error(sh.md_escape(e))
                return None
        elif prev.get("PATH") and Path(prev["PATH"]).is_dir():
            path = Path(prev["PATH"])
            st.caption(f"Using the previously uploaded tree: {sh.md_escape(path.name)}.")
        if path is None:
            st.info("Upload a zip of an image folder tree.")
            return None
    depth = sh.tree_depth(path)
    if st.session_state.get("d_img_for") != str(path):  # a new tree: rank names for its depth
        st.session_state["d_img_for"] = str(path)
        ranks = list(prev.get("RANKS") or [])
        st.session_state["d_img_ranks"] = ", ".join(ranks if len(ranks) == depth else
                                                    [f"level{i + 1}" for i in range(depth)])
        st.session_state["d_img_size"] = int(prev.get("IMAGE_SIZE") or DEFAULT_IMAGE_SIZE)
    c1, c2 = st.columns([3, 1])
    ranks_text = c1.text_input(f"Rank names, coarse to fine (one per folder level; this tree is {depth} deep)",
                               key="d_img_ranks")
    size = c2.number_input("Image size (px)", 8, 512, step=8, key="d_img_size",
                           help="Images are resized to size x size once and cached.")
    ranks = [r.strip() for r in ranks_text.split(",") if r.strip()]
    if not ranks:
        st.error("Name at least one rank.")
        return None
    return {"NAME": "images", "PATH": str(path), "RANKS": ranks, "IMAGE_SIZE": int(size)}


SECTIONS = {"Built-in": builtin_section, "Upload a file": upload_section, "Image folder": image_folder_section}
with st.container(border=True):
    data = SECTIONS[source]()
    if data is not None:
        sh.init("d_val", float(current.get("VAL_FRACTION", 0.2)))
        data["VAL_FRACTION"] = st.slider("Validation fraction", 0.05, 0.5, step=0.05, key="d_val",
                                         help="Stratified by label path.")
        data.setdefault("SEED", int(current.get("SEED", 0)))

if data is None:
    st.stop()

try:
    ds = sh.load_dataset(data)
except LIBRARY_ERRORS as e:
    st.error(sh.md_escape(e))
    st.stop()

sh.set_data_section(data)
summary = ds.summary_frame()
st.success(f"The Train page will train on **{sh.md_escape(ds.name)}** ({len(ds):,} samples).", icon=":material/check:")

is_image = ds.is_image
is_sets = ds.valid is not None  # (N, S) padding mask: each sample is a set of rows
c1, c2, c3, c4 = st.columns([1, 1, 2.4, 1])
c1.metric("Sets" if is_sets else "Samples", f"{len(ds):,}",
          help="Each sample is a set: the rows that share a group id." if is_sets else None)
if is_image:
    _, channels, height, width = ds.features.shape
    c2.metric("Images", f"{channels}×{height}×{width}", help="Channels × height × width, as the model sees them.")
else:
    c2.metric("Features", ds.num_features)
c3.metric("Ranks", " > ".join(ds.taxonomy.ranks))
fully = float((ds.targets != 0).all(dim=1).float().mean())
c4.metric("Fully labelled", f"{fully:.1%}", help="Samples with a label at every rank.")
if ds.feature_notes:
    st.caption(f"Features: {sh.md_escape(ds.feature_notes)}")
split_caption, split_notes = sh.split_report(ds, data["VAL_FRACTION"], data["SEED"], data.get("TEST_FRACTION"))
st.caption(split_caption)
for note in split_notes:  # labels equal up to case, skipped files, a split that cannot honour its fraction
    st.warning(sh.md_escape(note), icon=":material/warning:")

if is_sets:
    sizes = ds.valid.sum(dim=1)  # (N,) real elements per set
    st.caption(sh.md_escape(
        f"Sets: {len(ds):,} sets of {int(sizes.min())} to {int(sizes.max())} rows ({int(sizes.sum()):,} rows in all), "
        f"padded to {ds.valid.shape[1]}; padding never changes a prediction. Train with the set_attention backbone."))
    if int(getattr(ds, "set_cut", 0) or 0):
        st.caption(sh.md_escape(f"{ds.set_cut:,} sets were longer than DATA.MAX_SET_SIZE and keep a seeded subsample."))
    st.plotly_chart(plots.set_size_histogram(ds.valid), key="set_sizes")

tab_tax, tab_counts, tab_ranks, tab_rows = st.tabs(["Taxonomy", "Class counts", "Ranks & nulls", "Rows"])
with tab_tax:
    st.caption("Each ring is a rank, sized by samples. A gap under a node is the share of its samples whose "
               "label stops there (null at the finer ranks). Click a node to zoom.")
    if is_image:
        left, right = st.columns([1, 1.3])
        with left:
            st.plotly_chart(plots.taxonomy_sunburst(ds), key="sunburst")
        with right:
            if st.session_state.get("d_thumb_rank") not in ds.taxonomy.ranks:
                st.session_state["d_thumb_rank"] = ds.taxonomy.ranks[-1]
            rank = st.selectbox("Thumbnails per class at rank", list(ds.taxonomy.ranks), key="d_thumb_rank")
            st.plotly_chart(sh.thumbnail_grid(data, rank), key="thumbnails")
            st.caption(f"Up to {plots.THUMBS_PER_CLASS} images per class (a fixed random pick); the number "
                       "beside a class is its sample count; (null): images labelled only above this rank.")
    else:
        st.plotly_chart(plots.taxonomy_sunburst(ds), key="sunburst")
with tab_counts:
    if st.session_state.get("d_count_rank") not in ds.taxonomy.ranks:
        st.session_state["d_count_rank"] = ds.taxonomy.ranks[-1]
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    rank = c1.selectbox("Rank", list(ds.taxonomy.ranks), key="d_count_rank")
    sh.init("d_count_log", False)
    log_x = c2.toggle("Log scale", key="d_count_log",
                      help="Counts on a log axis: rare classes stay visible beside common ones.")
    st.plotly_chart(plots.class_count_bars(ds.class_counts(rank), rank, log_x=log_x), key="class_counts")
with tab_ranks:
    st.caption("Classes exclude null. Null rate = share of samples with no label at that rank.")
    st.dataframe(summary, hide_index=True, column_config={
        "null_rate": st.column_config.ProgressColumn("null rate", format="percent", min_value=0.0, max_value=1.0),
        "labelled": st.column_config.NumberColumn("labelled samples", format="localized"),
    })
with tab_rows:
    st.caption("How raw values become tensors: labels are encoded per rank (0 = null), features as listed.")
    row = st.number_input("Row to trace", 0, max(len(ds) - 1, 0), 0, key="d_row")
    st.code(ds.describe(int(row)), language=None)
    head = ds.taxonomy.decode(ds.targets[:10])
    for r, rank in enumerate(ds.taxonomy.ranks):
        head[f"{rank} id"] = ds.targets[:10, r].tolist()
    st.dataframe(head, hide_index=True)


def embed_section(data: dict, ds) -> None:
    """Embed (issue 15): a trained image run's frozen backbone over every image of this data, once, into a
    Parquet file to train on as a table. Runs here, in-process, with a progress bar (an interrupted embed goes
    on from its finished parts when started again with the same run and file)."""
    from workbench.config import Config
    from workbench.embed import EMBED_PREFIX, SPLIT_COLUMN, embed_dataset
    from workbench.errors import USER_ERRORS

    st.caption(f"Runs a trained image run's backbone, frozen, once over all {len(ds):,} images and writes one row "
               f"per image: `{EMBED_PREFIX}0..`, the ranks and the split. Train on that file as a table "
               f"(DATA.FEATURE_PREFIX {EMBED_PREFIX}, DATA.SPLIT_COLUMN {SPLIT_COLUMN}): seconds per epoch instead "
               "of minutes, so a sweep over w and the null schedule is cheap.")
    runs = sh.get_store().runs(with_config=True)
    if len(runs) and "MODEL.BACKBONE" in runs:
        runs = runs[runs["MODEL.BACKBONE"].isin(sh.IMAGE_BACKBONES) & (runs["status"] != "queued")]
    labels = {row["id"]: sh.run_label(row) for row in runs.to_dict("records")} if len(runs) else {}
    other = "Another checkpoint or bundle file..."
    choice = st.selectbox("Weights from", [*labels, other], key="d_emb_run",
                          format_func=lambda r: labels.get(r, r),
                          help="TRAIN.INIT_FROM: an image run of this store (its selected epoch), or a checkpoint / "
                               "exported bundle file. The run's own model settings build the backbone.")
    ref = choice
    if choice == other:
        ref = st.text_input("Checkpoint or bundle path", key="d_emb_ref", placeholder="runs/export/<run id>.pt").strip()
    sh.init("d_emb_out", str(sh.store_path().parent / "embeddings" / f"{sh.safe_name(ds.name)}.parquet"))
    out = st.text_input("Output file (.parquet)", key="d_emb_out").strip()
    if st.button("Embed", key="d_emb_go", icon=":material/play_arrow:", disabled=not ref or not out):
        bar = st.progress(0.0, text="Loading the data and the weights...")

        def show(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"{done:,} / {total:,} images")

        try:
            cfg = Config.from_dict({"DATA": data, "TRAIN": {"INIT_FROM": ref},
                                    "TRACKING": {"STORE": str(sh.store_path())}}, source="Data page")
            path = embed_dataset(cfg, out, progress=False, on_progress=show)
        except USER_ERRORS as e:
            st.session_state.pop("d_emb_done", None)
            st.error(sh.md_escape(e))
            return
        st.session_state["d_emb_done"] = {"data": sh.dataset_key(data), "path": str(path)}
    last = st.session_state.get("d_emb_done") or {}
    done = last.get("path") if last.get("data") == sh.dataset_key(data) else None  # this data's file only
    if done:
        st.success(f"Embeddings written to {sh.md_escape(done)}", icon=":material/check:")
        st.code(done, language=None)  # to copy into a config's DATA.PATH (Upload a file reads it too)


if is_image:
    with st.expander("Embed these images with a trained backbone", icon=":material/memory:"):
        embed_section(data, ds)
