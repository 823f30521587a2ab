#!/usr/bin/env bash
# The evidence grids behind docs/results/, one function per results page regenerated from them.
#   bash benchmarks/evidence.sh GRID [GRID ...]     e.g. mdpo-on orpo-cheetah
#   bash benchmarks/evidence.sh keep                stage every finished run for a commit
# Every grid writes under runs/evidence/ and is a set of `ctrlrl sweep` calls, so running it again
# skips the finished runs (their done.json), resumes cut runs that still have a local checkpoint and
# starts the rest. The repository keeps each finished run's config, metrics and done.json (not its
# checkpoints or event files), so a grid can be completed over several sittings and on another
# machine; `keep` stages exactly those runs (an unfinished one would start over elsewhere).
# WORKERS (default 2) runs at a time, each with one torch thread.
set -uo pipefail
cd "$(dirname "$0")/.."
W=${WORKERS:-2}
EV=runs/evidence

# MDPO on-policy vs PPO (ctrlrl's and stable-baselines3's), 1M steps, 5 seeds, in two variants:
# "minimal" turns off, for every learner, the code-level tricks the MDPO paper's minimal variant
# drops (observation and reward normalisation, orthogonal init, value clipping; no learner anneals
# its learning rate by default); "tricks" is each learner's shipped MuJoCo preset.
MINIMAL=(--set normalize_obs=false --set normalize_reward=false --set ortho_init=false
         --set clip_range_vf=null)
grid_mdpo_on() {
    local common=(--seeds 0-4 --total-steps 1000000 --set eval_every=20000 --workers "$W")
    for env in Walker2d-v5 Hopper-v5; do
        ctrlrl sweep --algos mdpo,ppo --envs $env "${common[@]}" "${MINIMAL[@]}" --out $EV/mdpo-on/minimal
    done
    for env in Walker2d-v5 Hopper-v5; do
        ctrlrl sweep --algos mdpo,ppo --envs $env "${common[@]}" --out $EV/mdpo-on/tricks
    done
}
grid_mdpo_on_sb3() {  # the external rows, at ctrlrl PPO's resolved settings
    local common=(--algos sb3-ppo --total-steps 1000000 --set eval_every=20000 --workers 1)
    local minimal=("${common[@]}" "${MINIMAL[@]}" --out $EV/mdpo-on/minimal)
    local tricks=("${common[@]}" --out $EV/mdpo-on/tricks)
    for env in Walker2d-v5 Hopper-v5; do
        # two lanes, one per core, each three seeds of one variant then two of the other: five runs
        # two at a time would leave a core idle through the fifth
        { ctrlrl sweep --envs $env --seeds 0-2 "${minimal[@]}"; ctrlrl sweep --envs $env --seeds 3-4 "${tricks[@]}"; } &
        { ctrlrl sweep --envs $env --seeds 0-2 "${tricks[@]}"; ctrlrl sweep --envs $env --seeds 3-4 "${minimal[@]}"; } &
        wait
    done
}

# ORPO on HalfCheetahEnergy: every learner starts from a PPO base trained on the true reward and
# trains on the proxy (speed only). λ is in units of the normalised per-step reward: √χ² over
# {0.02, 0.1, 0.5} and both KLs over {0.01, 0.1, 1} span the paper's sweeps ({0.01 … 1} × the
# reward std for √χ², {0.001 … 10} × the reward scale for KL) around the 0.1 first run.
# 1M steps: at 400k unregularised PPO had only begun to lose true return (constant lr, so the
# 400k runs extend to 1M as if started at 1M).
ORPO_BASE=$EV/orpo/base/ctrlrl/HalfCheetahEnergy-true-v0/ppo/seed0
grid_orpo_cheetah() {
    ctrlrl sweep --algos ppo --envs ctrlrl/HalfCheetahEnergy-true-v0 --seeds 0 --total-steps 300000 \
        --set eval_every=50000 --workers 1 --out $EV/orpo/base
    local common=(--envs ctrlrl/HalfCheetahEnergy-v0 --seeds 0-4 --total-steps 1000000
                  --set base_policy=$ORPO_BASE --set n_envs=4 --set n_steps=512 --set eval_every=20000
                  --set eval_episodes=5 --workers "$W" --out $EV/orpo/cheetah)
    ctrlrl sweep --algos orpo --vary reg_coef=0 "${common[@]}"
    ctrlrl sweep --algos orpo --vary divergence=sqrt_chi2 --vary reg_coef=0.02,0.1,0.5 "${common[@]}"
    ctrlrl sweep --algos orpo --vary divergence=kl --vary reg_coef=0.01,0.1,1 "${common[@]}"
    ctrlrl sweep --algos ppo-adreg --vary reg_coef=0.01,0.1,1 "${common[@]}"
    # one λ below each range: every λ above held the policy at the base, so where does each stop?
    ctrlrl sweep --algos orpo --vary divergence=sqrt_chi2 --vary reg_coef=0.004 "${common[@]}"
    ctrlrl sweep --algos orpo --vary divergence=kl --vary reg_coef=0.001 "${common[@]}"
    ctrlrl sweep --algos ppo-adreg --vary reg_coef=0.001 "${common[@]}"
    # below λ 0.1 the unclipped √χ² penalty (e^d − 1)/√χ̂² blew up once a policy drifted off the
    # base (10⁵ per step): the same two λ with the tomato preset's clip at 10
    ctrlrl sweep --algos orpo --vary divergence=sqrt_chi2 --vary reg_coef=0.004,0.02 \
        --vary penalty_clip=10 "${common[@]}"
    # lower for both KLs, a decade at a time: each held the policy above the unregularised return
    # from λ 0.001 up, so where does each stop?
    ctrlrl sweep --algos orpo,ppo-adreg --vary divergence=kl --vary reg_coef=0.0001 "${common[@]}"
    ctrlrl sweep --algos orpo,ppo-adreg --vary divergence=kl --vary reg_coef=0.00001 "${common[@]}"
    # the unregularised reference above is ORPO at λ 0, whose own policy gets half the steps (the
    # base's rollouts count): plain PPO from the base, with the action-KL runs' accounting
    ctrlrl sweep --algos ppo-adreg --vary reg_coef=0 "${common[@]}"
}

# MDPO off-policy vs SAC (ctrlrl's and stable-baselines3's), 300k steps, 5 seeds, in fp32 (their
# default).
grid_mdpo_off() {
    ctrlrl sweep --algos mdpo-off,sac --envs Hopper-v5,HalfCheetah-v5 --seeds 0-4 --total-steps 300000 \
        --set eval_every=10000 --workers "$W" --out $EV/mdpo-off
}
grid_mdpo_off_sb3() {  # the external SAC rows, at ctrlrl SAC's resolved settings
    ctrlrl sweep --algos sb3-sac --envs Hopper-v5,HalfCheetah-v5 --seeds 0-4 --total-steps 300000 \
        --set eval_every=10000 --workers "$W" --out $EV/mdpo-off
}

# PDPPO vs PPO (the paper's baseline settings: the lot-sizing preset) and PDPPO's single-critic
# ablation on three lot-sizing instances, 200k steps, evaluated (10 episodes) and logged every 4000
# steps, as the authors' code logs its training return: evaluating after every 400-step update
# would cost 2.5 times the training's env steps; seeds 0-4 and 5-9 instance by instance, then the
# paper's lake (ctrlrl/ProximityLakePD-v0: the decision earns the intended cell's proximity to the
# goal), 30 runs per learner at the paper's 200k steps. `pdppo-20` takes lot-sizing to the paper's
# 20 runs per instance (seeds 10-19), after the other claims' minimum protocols.
pdppo_lot_sizing() {  # SEEDS
    for n in 20x10 25x10 25x15; do
        local common=(--envs ctrlrl/LotSizing-$n-v0 --seeds $1 --total-steps 200000
                      --set eval_every=4000 --set log_every=4000 --workers "$W" --out $EV/pdppo)
        ctrlrl sweep --algos pdppo,ppo "${common[@]}"
        ctrlrl sweep --algos pdppo --vary critics=pre "${common[@]}"
    done
}
grid_pdppo() {
    pdppo_lot_sizing 0-4
    pdppo_lot_sizing 5-9
    ctrlrl sweep --algos pdppo,ppo --envs ctrlrl/ProximityLakePD-v0 --seeds 0-29 --total-steps 200000 \
        --set eval_every=4000 --set log_every=4000 --workers "$W" --out $EV/pdppo-lake
    # the dual critic with V^x regressing the total return R (the authors' earlier form): tells
    # whether its late fall-back on lot-sizing comes from the max over two different returns
    ctrlrl sweep --algos pdppo --vary post_return=shared --seeds 0-4 --total-steps 200000 \
        --envs ctrlrl/LotSizing-20x10-v0,ctrlrl/LotSizing-25x10-v0,ctrlrl/LotSizing-25x15-v0 \
        --set eval_every=4000 --set log_every=4000 --workers "$W" --out $EV/pdppo
    # the one-critic ablation on the lake: is PDPPO's more random training policy there the max's?
    ctrlrl sweep --algos pdppo --vary critics=pre --envs ctrlrl/ProximityLakePD-v0 --seeds 0-9 \
        --total-steps 200000 --set eval_every=4000 --set log_every=4000 --workers "$W" \
        --out $EV/pdppo-lake
    # and with V^x on the total return: is the lake's more random dual-critic policy, as the
    # lot-sizing fall-back on 25x10, the max over two different returns?
    ctrlrl sweep --algos pdppo --vary post_return=shared --envs ctrlrl/ProximityLakePD-v0 --seeds 0-9 \
        --total-steps 200000 --set eval_every=4000 --set log_every=4000 --workers "$W" \
        --out $EV/pdppo-lake
}

# Policy gradients: a γ0 grid per method and env at the full budget, seeds 0-1 (normalised methods
# over {0.03, 0.1, 0.3, 1}; the unnormalised ones over 1/3, 1 and 3 times their calibrated preset
# step); where a method's best is the grid's smallest or largest value, one more value past that
# edge (at most two rounds: `npg_robustness.py edges`), then each method's best γ0 at seeds 2-4.
grid_npg() {
    local out=$EV/npg
    for e in "Reacher-v5 300000 10000" "Walker2d-v5 1000000 20000"; do
        set -- $e
        local common=(--envs $1 --total-steps $2 --set eval_every=$3 --workers "$W" --out $out)
        ctrlrl sweep --algos npg-igt,n-harpg,npg-momentum --seeds 0-1 --vary gamma0=0.03,0.1,0.3,1.0 "${common[@]}"
        if [ $1 = Reacher-v5 ]; then
            ctrlrl sweep --algos pg --seeds 0-1 --vary gamma0=0.00015,0.0005,0.0015 "${common[@]}"
            ctrlrl sweep --algos harpg --seeds 0-1 --vary gamma0=1.5e-05,5e-05,0.00015 "${common[@]}"
        else
            ctrlrl sweep --algos pg --seeds 0-1 --vary gamma0=0.0004,0.0012,0.0036 "${common[@]}"
            ctrlrl sweep --algos harpg --seeds 0-1 --vary gamma0=4e-05,0.00012,0.00036 "${common[@]}"
        fi
        for round in 1 2; do
            local past=$(python benchmarks/npg_robustness.py edges $out | grep "^$1 ")
            [ -n "$past" ] || break
            echo "$past" | while read -r env algo g; do
                ctrlrl sweep --algos $algo --seeds 0-1 --vary gamma0=$g "${common[@]}" </dev/null
            done
        done
        python benchmarks/npg_robustness.py best $out | grep "^$1 " | while read -r env algo g; do
            ctrlrl sweep --algos $algo --seeds 2-4 --vary gamma0=$g "${common[@]}" </dev/null
        done
    done
}

# Offline: the generated datasets (docs/datasets.md), then TD3+BC and BC, A2PR (its paper_settings
# row) and O-DICE (at the λ offline-tuning chose), 300k gradient steps, 5 seeds, evaluated every 10k
# steps (10 episodes).
# A machine without the files makes them again from the behaviour policies kept in
# benchmarks/behaviour/ (`ctrlrl collect --policy`: the rows of the SAC run's own rollout, in
# minutes instead of an hour; see docs/datasets.md), or, for a level none is kept for, by training SAC. Each run's dataset.json holds
# the SHA-256 of the rows it read, a resume refuses other rows and `ctrlrl report` will not pool runs
# that read different ones.
DATA=${CTRLRL_DATA:-$HOME/.cache/ctrlrl/data}/generated
dataset() {  # ENV LEVEL: make the file unless it is there; fails if a collect fails or is cut, so that
            # its grid stops instead of training on a file that is not there
    local kept=benchmarks/behaviour/$1-$2.npz
    [ -f $DATA/$1-$2.hdf5 ] && return
    if [ -f $kept ]; then
        ctrlrl collect --env $1 --level $2 --policy $kept --size 1000000 -o $DATA/$1-$2.hdf5
    else
        ctrlrl collect --env $1 --level $2 --train-steps 400000 --size 1000000 -o $DATA/$1-$2.hdf5
    fi
}
# In two stages (`ctrlrl sweep` trains finished runs on at a larger budget): every cell to 100k
# gradient steps, then all to 300k; `ctrlrl report --at-step 100000` compares the cells at 100k
# while the second stage runs. Within a stage the cheap learners of both datasets go first.
# Each learner's precision is pinned, so the grid is the same on every machine (`auto` would resolve
# bf16 on one CPU and fp32 on another, and a run could not be continued where it resolves otherwise):
# all in fp32, the papers' precision. A2PR's bf16 ended no worse in its precision row and is faster
# on a CPU with bf16 matmuls (docs/speed.md), but emulated, and slower than fp32, on one without;
# fp32 runs at a usable rate on every machine (A2PR ≈ 13 gradient steps/s on a 2-core AMD EPYC).
OFFLINE_STAGES="100000 300000"
# a checkpoint every 10k gradient steps (minutes), so a machine that stops without warning loses little
offline_sweep() {  # ALGOS ENV SEEDS BUDGET WORKERS [--set ...]: one cell of the grid
    local algos=$1 env=$2 seeds=$3 budget=$4 workers=$5; shift 5
    ctrlrl sweep --algos $algos --envs $env --seeds $seeds --total-steps $budget \
        --set dataset=$DATA/$env-medium.hdf5 --set eval_every=10000 --set eval_episodes=10 \
        --set precision=fp32 --set checkpoint_every=10000 --workers $workers --out $EV/offline "$@" </dev/null
}
grid_offline() {
    local budget env lam_hopper lam_walker
    for env in Hopper-v5 Walker2d-v5; do dataset $env medium || return; done
    lam_hopper=$(odice_lambda Hopper-v5) && lam_walker=$(odice_lambda Walker2d-v5) || return
    local a2pr_hopper=(--set paper_settings=hopper-medium)
    local a2pr_walker=(--set paper_settings=walker2d-medium)
    for budget in $OFFLINE_STAGES; do
        for env in Hopper-v5 Walker2d-v5; do offline_sweep bc,td3bc $env 0-4 $budget "$W"; done
        # the slow learners in two lanes, one per core, each three seeds of one dataset then two
        # of the other: five runs of one dataset two at a time would leave a core idle through
        # the fifth
        { offline_sweep a2pr Hopper-v5 0-2 $budget 1 "${a2pr_hopper[@]}"
          offline_sweep a2pr Walker2d-v5 3-4 $budget 1 "${a2pr_walker[@]}"
          offline_sweep odice Hopper-v5 0-2 $budget 1 --set lam=$lam_hopper
          offline_sweep odice Walker2d-v5 3-4 $budget 1 --set lam=$lam_walker; } &
        { offline_sweep a2pr Walker2d-v5 0-2 $budget 1 "${a2pr_walker[@]}"
          offline_sweep a2pr Hopper-v5 3-4 $budget 1 "${a2pr_hopper[@]}"
          offline_sweep odice Walker2d-v5 0-2 $budget 1 --set lam=$lam_walker
          offline_sweep odice Hopper-v5 3-4 $budget 1 --set lam=$lam_hopper; } &
        wait
    done
}

# O-DICE's offline imitation: one expert trajectory of the hopper expert set (index T, as the
# reference's T), rewards unused, 3 seeds, against BC on the same trajectory.
grid_offline_il() {
    dataset Hopper-v5 expert || return
    local budget
    for budget in $OFFLINE_STAGES; do
        ctrlrl sweep --algos odice-il,bc --envs Hopper-v5 --seeds 0-2 --vary expert_trajectory=1,10 \
            --total-steps $budget --set dataset=$DATA/Hopper-v5-expert.hdf5 --set eval_every=10000 \
            --set eval_episodes=10 --set precision=fp32 --set checkpoint_every=10000 --workers "$W" \
            --out $EV/offline-il
    done
}

# O-DICE's λ per dataset. Its paper tunes λ and η per dataset (appendix D, a table this suite could
# not read) and λ decides how much of the data the policy clones: with the reference's relu weight
# and χ², the mean residual settles near 2/λ − 4, so λ 0.6 (the reference's default) clones the 1-7%
# of transitions with a positive residual, 0.5 about half, 0.4 nearly all. So, as in the paper, λ is
# chosen per dataset on the dataset itself: 0.4, 0.5 and 0.6 (η 1), seeds 100-101 (outside the
# grid's), 50k gradient steps, evaluated every 5k (10 episodes); the λ with the highest mean AUC of
# the normalised score wins (rule fixed before these runs). In bf16, for speed: the precision row
# below then checks bf16 at the chosen λ. TD3+BC and BC get no such tuning; A2PR runs its paper's
# per-dataset row.
grid_offline_tuning() {
    for env in Hopper-v5 Walker2d-v5; do
        dataset $env medium || return
        ctrlrl sweep --algos odice --envs $env --seeds 100-101 --vary lam=0.4,0.5,0.6 \
            --total-steps 50000 --set dataset=$DATA/$env-medium.hdf5 --set eval_every=5000 \
            --set eval_episodes=10 --set precision=bf16 --workers "$W" --out $EV/offline-tuning
    done
}
odice_lambda() {  # ENV: the λ the tuning chose, read from a report of its finished runs, written
    # aside (the page, docs/results/offline-odice-lambda.md, is regenerated by its own command)
    local tmp status
    tmp=$(mktemp -d)
    ctrlrl report $EV/offline-tuning --finished -o "$tmp/lambda" >/dev/null &&
        python - "$1" "$tmp/lambda.json" <<'PY'
import json, re, sys
env, report = sys.argv[1:]
rows = [r for r in json.load(open(report))["rows"] if r["env"] == env]
if len(rows) < 3 or any(r["seeds"] < 2 for r in rows):
    sys.exit(f"evidence.sh: O-DICE's λ for {env} is not chosen yet: its tuning runs are not all "
             "finished (bash benchmarks/evidence.sh offline-tuning)")
print(re.search(r"lam=([0-9.]+)", max(rows, key=lambda r: r["auc_mean"])["label"]).group(1))
PY
    status=$?
    rm -rf "$tmp"
    return $status
}
# Each algorithm's precision: fp32 against bf16, 5 seeds, short budgets — the rows docs/speed.md's
# table still lacks (its Pendulum and TD3+BC rows are in). The offline learners' rows first: the
# offline grid runs each learner at its default precision, which these rows decide.
grid_precision() {
    local common=(--seeds 0-4 --vary precision=fp32,bf16 --workers "$W")
    dataset Hopper-v5 medium || return
    ctrlrl sweep --algos a2pr --envs Hopper-v5 --total-steps 30000 \
        --set dataset=$DATA/Hopper-v5-medium.hdf5 "${common[@]}" --out $EV/precision/hopper-medium
    # at its tuned λ: at the reference's 0.6 it learnt nothing by 30k steps in either precision
    local lam
    lam=$(odice_lambda Hopper-v5) && ctrlrl sweep --algos odice --envs Hopper-v5 --total-steps 50000 \
        --set lam=$lam --set dataset=$DATA/Hopper-v5-medium.hdf5 "${common[@]}" \
        --out $EV/precision/hopper-medium-odice
}
grid_precision_online() {
    ctrlrl sweep --algos sac,td3 --envs Hopper-v5 --total-steps 100000 --seeds 0-4 \
        --vary precision=fp32,bf16 --workers "$W" --out $EV/precision/hopper
}

keep() {
    # finished runs only; the ORPO base's checkpoint too, as the learners start from it
    find $EV -name done.json -printf '%h\n' | xargs -r git add --
    [ -f $ORPO_BASE/done.json ] && git add -f $ORPO_BASE/checkpoints/latest.pt
    echo "$(git status --short $EV | grep -c '^[AM]') files staged under $EV"
}

GRIDS="mdpo-on mdpo-on-sb3 orpo-cheetah mdpo-off mdpo-off-sb3 pdppo pdppo-20 npg offline-tuning offline offline-il precision precision-online"
[ $# -gt 0 ] || { echo "usage: bash benchmarks/evidence.sh GRID... | keep (grids: $GRIDS)"; exit 2; }
# one chain at a time: a second would share the two cores and find its runs held by the first
if [ "$*" != keep ] && { pgrep -f "ctrlrl sweep" >/dev/null ||
                         pgrep -f "benchmarks/evidence.sh" | grep -qvx $$; }; then
    echo "evidence.sh: grids are already running (pgrep -af 'ctrlrl sweep|evidence.sh'); let them" \
         "finish or stop them (pkill -INT -f 'ctrlrl sweep' checkpoints every run) first"
    exit 2
fi
for grid in "$@"; do
    case $grid in
        mdpo-on) grid_mdpo_on ;;
        mdpo-on-sb3) grid_mdpo_on_sb3 ;;
        orpo-cheetah) grid_orpo_cheetah ;;
        mdpo-off) grid_mdpo_off ;;
        mdpo-off-sb3) grid_mdpo_off_sb3 ;;
        pdppo) grid_pdppo ;;
        pdppo-20) pdppo_lot_sizing 10-19 ;;
        npg) grid_npg ;;
        offline-tuning) grid_offline_tuning ;;
        offline) grid_offline ;;
        offline-il) grid_offline_il ;;
        precision) grid_precision ;;
        precision-online) grid_precision_online ;;
        keep) keep ;;
        *) echo "evidence.sh: unknown grid '$grid' (grids: $GRIDS; or keep)"; exit 2 ;;
    esac
done
