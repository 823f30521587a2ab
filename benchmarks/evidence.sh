#!/usr/bin/env bash
# The evidence grids behind docs/results/, one function per results page.
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
    local common=(--seeds 0-4 --total-steps 1000000 --set eval_every=20000 --workers "$W")
    for env in Walker2d-v5 Hopper-v5; do
        ctrlrl sweep --algos sb3-ppo --envs $env "${common[@]}" "${MINIMAL[@]}" --out $EV/mdpo-on/minimal
        ctrlrl sweep --algos sb3-ppo --envs $env "${common[@]}" --out $EV/mdpo-on/tricks
    done
}

# ORPO on HalfCheetahEnergy: every learner starts from a PPO base trained on the true reward and
# trains on the proxy (speed only). λ is in units of the normalised per-step reward: √χ² over
# {0.02, 0.1, 0.5} and both KLs over {0.01, 0.1, 1} span the paper's sweeps ({0.01 … 1} × the
# reward std for √χ², {0.001 … 10} × the reward scale for KL) around the 0.1 first run.
grid_orpo_cheetah() {
    local base=$EV/orpo/base-cheetah
    if [ ! -f $base/done.json ]; then
        ctrlrl sweep --algos ppo --envs ctrlrl/HalfCheetahEnergy-true-v0 --seeds 0 --total-steps 300000 \
            --set eval_every=50000 --workers 1 --out $EV/orpo/base
        rm -rf $base && cp -r $EV/orpo/base/ctrlrl/HalfCheetahEnergy-true-v0/ppo/seed0 $base
    fi
    local common=(--envs ctrlrl/HalfCheetahEnergy-v0 --seeds 0-4 --total-steps 400000
                  --set base_policy=$base --set n_envs=4 --set n_steps=512 --set eval_every=20000
                  --set eval_episodes=5 --workers "$W" --out $EV/orpo/cheetah)
    ctrlrl sweep --algos orpo --vary reg_coef=0 "${common[@]}"
    ctrlrl sweep --algos orpo --vary divergence=sqrt_chi2 --vary reg_coef=0.02,0.1,0.5 "${common[@]}"
    ctrlrl sweep --algos orpo --vary divergence=kl --vary reg_coef=0.01,0.1,1 "${common[@]}"
    ctrlrl sweep --algos ppo-adreg --vary reg_coef=0.01,0.1,1 "${common[@]}"
}

keep() {
    # finished runs only; the ORPO base's checkpoint too, as the learners start from it
    find $EV -name done.json -printf '%h\n' | xargs -r git add --
    [ -f $EV/orpo/base-cheetah/checkpoints/latest.pt ] && git add -f $EV/orpo/base-cheetah/checkpoints/latest.pt
    git status --short $EV | grep -c '^A' || true
}

[ $# -gt 0 ] || { echo "usage: bash benchmarks/evidence.sh GRID... | keep (grids: mdpo-on mdpo-on-sb3 orpo-cheetah)"; exit 2; }
for grid in "$@"; do
    case $grid in
        mdpo-on) grid_mdpo_on ;;
        mdpo-on-sb3) grid_mdpo_on_sb3 ;;
        orpo-cheetah) grid_orpo_cheetah ;;
        keep) keep ;;
        *) echo "evidence.sh: unknown grid '$grid' (grids: mdpo-on mdpo-on-sb3 orpo-cheetah; or keep)"; exit 2 ;;
    esac
done
