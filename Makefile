# `make test` and `make reproduce` work on a fresh clone: they create .venv and install noderun first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= quick
SEEDS ?= 0
# profile=fast is a Table 1 protocol: with PROFILE=fast the MLP row trains on the paper profile (minutes
# on a CPU), the conv rows on fast in PRECISION, and the other experiments on quick.
PRECISION ?= $(if $(filter fast,$(PROFILE)),bf16-mixed,32)
OTHER_PROFILE := $(if $(filter fast,$(PROFILE)),quick,$(PROFILE))

.PHONY: install test test-all reproduce table1 reference depth figure3 table2 table2-ablation flows rnode crossing table plot bench data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## The fast test suite (a few minutes on 2 CPU cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## Everything, including tests marked slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

data: $(STAMP)
	$(BIN)/noderun data

## Everything: Table 1, depth, Figure 3, Table 2, the flows, the crossing experiment (beyond the paper), then
## tables and figures. PROFILE=quick|fast|paper, SEEDS=0,1,2
reproduce: $(STAMP) data table1 depth figure3 table2 flows crossing table plot

## Table 1; on PROFILE=quick and fast also the ANODE row (beyond the paper: model=anode); on paper it is not
## trained by default: `noderun train model=anode profile=paper`.
COMMA := ,
TABLE1_BEYOND := $(if $(filter quick fast,$(PROFILE)),$(COMMA)anode)
table1: $(STAMP)
ifeq ($(PROFILE),fast)
	$(BIN)/noderun train -m model=mlp profile=paper seed=$(SEEDS)
	$(BIN)/noderun train -m model=resnet,rknet,odenet$(TABLE1_BEYOND) profile=fast precision=$(PRECISION) seed=$(SEEDS)
else
	$(BIN)/noderun train -m model=mlp,resnet,rknet,odenet$(TABLE1_BEYOND) profile=$(PROFILE) seed=$(SEEDS)
endif

## Table 1's ODE-Net as the reference implementation (torchdiffeq, time as a concatenated channel):
## rows in results/reference.csv, compared by `noderun table` with Table 1's ODE-Net; not part of reproduce.
reference: $(STAMP)
	$(BIN)/noderun train model=odenet model.time_channel=concat solver.backend=torchdiffeq experiment_name=reference profile=$(PROFILE) seed=$(SEEDS)

depth: $(STAMP)
	$(BIN)/noderun train -m experiment=depth_resnet profile=$(OTHER_PROFILE) seed=$(SEEDS)
	$(BIN)/noderun train -m experiment=depth_ode profile=$(OTHER_PROFILE) seed=$(SEEDS)

## Figure 3 (a)-(c): tolerance sweep of the ODE-Net that table1 trained.
figure3: $(STAMP)
	$(BIN)/noderun train -m experiment=figure3 profile=$(PROFILE) seed=$(SEEDS)

## Table 2 on spirals with 30, 50 and 100 observations: the RNN, the paper's latent ODE (ELBO only), the same
## with torchdiffeq's example's two-layer dynamics, and noderun's (with the consistency term), on TABLE2_SEEDS (SEEDS when given, else quick 0-4,
## paper 0-2), each seed drawing its own spirals; then the noise-sensitivity rows (observation noise 0.1,
## 50 observations, 3 seeds) and the split of the spread at 50 observations into the data's (training
## seed 0, data seeds 1-2) and the training's (data seed 0, training seeds 1-2).
TABLE2_QUICK_SEEDS := 0,1,2,3,4
TABLE2_PAPER_SEEDS := 0,1,2
TABLE2_SEEDS ?= $(if $(filter command line,$(origin SEEDS)),$(SEEDS),$(if $(filter paper,$(OTHER_PROFILE)),$(TABLE2_PAPER_SEEDS),$(TABLE2_QUICK_SEEDS)))
TABLE2_METHODS := experiment=latent_ode,latent_ode_elbo,latent_ode_elbo_dyn2,rnn_spirals profile=$(OTHER_PROFILE) profile.progress=false
table2: $(STAMP)
	$(BIN)/noderun train -m $(TABLE2_METHODS) dataset.n_obs=30,50,100 seed=$(TABLE2_SEEDS)
	$(BIN)/noderun train -m $(TABLE2_METHODS) dataset.noise_std=0.1 dataset.n_obs=50 seed=$(TABLE2_PAPER_SEEDS)
	$(BIN)/noderun train -m $(TABLE2_METHODS) dataset.n_obs=50 dataset.seed=0 seed=1,2
	$(BIN)/noderun train -m $(TABLE2_METHODS) dataset.n_obs=50 dataset.seed=1,2 seed=0

## Table 2's ablation (not part of reproduce): at 50 observations, seeds 0-2, one setting changed at a time
## against the protocol of table2 (run that first); rows in results/table2_ablation.csv.
TABLE2_ABLATION := profile=$(OTHER_PROFILE) profile.progress=false experiment_name=table2_ablation dataset.n_obs=50 seed=0,1,2
table2-ablation: $(STAMP)
	$(BIN)/noderun train -m experiment=latent_ode_elbo,rnn_spirals $(TABLE2_ABLATION) dataset.train_coverage=same dataset.n_val=0 model.iterations.quick=1500
	$(BIN)/noderun train -m experiment=latent_ode_elbo,rnn_spirals $(TABLE2_ABLATION) dataset.train_coverage=same
	$(BIN)/noderun train -m experiment=latent_ode_elbo,rnn_spirals $(TABLE2_ABLATION) model.restarts=3
	$(BIN)/noderun train -m experiment=latent_ode_elbo $(TABLE2_ABLATION) model.kl_warmup=500
	$(BIN)/noderun train -m experiment=latent_ode_elbo $(TABLE2_ABLATION) model.obs_std=0.1
	$(BIN)/noderun train -m experiment=latent_ode_elbo $(TABLE2_ABLATION) model.lr=0.003 model.lr_min=0.0001
	$(BIN)/noderun train -m experiment=latent_ode_elbo $(TABLE2_ABLATION) solver.rtol=1e-5 solver.atol=1e-5
	$(BIN)/noderun train -m experiment=latent_ode_elbo $(TABLE2_ABLATION) model.dyn_layers=2

## Figures 4 and 5: planar NF and planar CNF, density matching and maximum likelihood, on FLOWS_SEEDS
## (SEEDS when given, else 0,1,2: noderun table reports mean ± std over them). Each flow run uses one
## thread: `make -j2 flows` runs two of the four sweeps at a time.
FLOWS_SEEDS ?= $(if $(filter command line,$(origin SEEDS)),$(SEEDS),0,1,2)
FLOWS_SWEEPS := density_nf density_cnf mle_nf mle_cnf
flows: $(addprefix flows-,$(FLOWS_SWEEPS))
flows-%: $(STAMP)
	$(BIN)/noderun train -m experiment=$* profile=$(OTHER_PROFILE) profile.progress=false seed=$(FLOWS_SEEDS)

## Beyond the paper: RNODE (Finlay et al. 2020) on the fast ODE-Net. The weight sweep on a validation set (the last
## 10,000 training images, seed 0; `noderun table` scores it by validation error), then RNODE_WEIGHTS (the weights
## that sweep chose) against the unregularised ODE-Net on RNODE_SEEDS (SEEDS when given, else 0,1,2), one thread a
## run: `make -j2 rnode`. The Jacobian term is swept beside kinetic 1e-4 (RNODE_JACOBIAN); it doubles an iteration's
## cost (make bench, bench_rnode).
## Then one CNF density cell (rnode-cnf-<weight>).
RNODE_SEEDS ?= $(if $(filter command line,$(origin SEEDS)),$(SEEDS),0,1,2)
RNODE_FAST := model=odenet profile=fast precision=bf16-mixed profile.progress=false
RNODE_SWEEP := $(RNODE_FAST) dataset.val_size=10000 experiment_name=rnode_sweep seed=0
RNODE_WEIGHTS ?= regularizer.kinetic=1e-4 regularizer.jacobian=0
RNODE_KINETIC := 1e-4 1e-3 1e-2
RNODE_JACOBIAN := 1e-4 1e-3
rnode: rnode-sweep-none $(addprefix rnode-sweep-,$(RNODE_KINETIC)) $(addprefix rnode-sweep-jacobian-,$(RNODE_JACOBIAN)) \
	rnode-none rnode-chosen rnode-cnf-0.01 rnode-cnf-0.1 rnode-cnf-tight-none rnode-cnf-tight-0.01 rnode-cnf-tight-0.1
rnode-sweep-none: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train $(RNODE_SWEEP)
## The same comparison with the forward solve's first step set (solver.first_step=FIRST_STEP) instead of selected by
## the usual heuristic, which at tolerance 1e-3 sets most of the fast ODE-Net's forward NFE.
FIRST_STEP ?= 0.5
RNODE_FIRST_STEP := $(RNODE_FAST) solver.first_step=$(FIRST_STEP) experiment_name=table1_first_step
rnode-first-step-none: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_FIRST_STEP) seed=$(RNODE_SEEDS)
rnode-first-step-chosen: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_FIRST_STEP) regularizer=rnode $(RNODE_WEIGHTS) seed=$(RNODE_SEEDS)
## One CNF density cell (U1, width 8, quick) with both terms at equal weights, beside make flows' unregularised runs.
RNODE_CNF := experiment=density_cnf profile=quick dataset.target=u1 model.width=8 profile.progress=false
## The same cell at the paper profile's tolerance 1e-5 (more evaluations for the terms to remove), with and without.
RNODE_CNF_TIGHT := $(RNODE_CNF) model.tolerance.quick=1e-5 experiment_name=flows_density_rnode_tight
rnode-cnf-tight-none: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_CNF_TIGHT) seed=$(RNODE_SEEDS)
rnode-cnf-tight-%: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_CNF_TIGHT) regularizer=rnode regularizer.kinetic=$* \
		regularizer.jacobian=$* seed=$(RNODE_SEEDS)
rnode-cnf-%: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_CNF) experiment_name=flows_density_rnode regularizer=rnode \
		regularizer.kinetic=$* regularizer.jacobian=$* seed=$(RNODE_SEEDS)
rnode-sweep-jacobian-%: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train $(RNODE_SWEEP) regularizer=rnode regularizer.kinetic=1e-4 regularizer.jacobian=$*
rnode-sweep-%: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train $(RNODE_SWEEP) regularizer=rnode regularizer.kinetic=$* regularizer.jacobian=0
rnode-none: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_FAST) seed=$(RNODE_SEEDS)
rnode-chosen: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/noderun train -m $(RNODE_FAST) experiment_name=table1_rnode regularizer=rnode $(RNODE_WEIGHTS) seed=$(RNODE_SEEDS)

## Beyond the paper: ODE against augmented ODE on maps a flow cannot represent (Dupont et al. 2019): 2 data
## sets x ODE/ANODE on CROSSING_SEEDS (SEEDS when given, else 0,1,2); about 10 s a run on the quick profile.
CROSSING_SEEDS ?= $(if $(filter command line,$(origin SEEDS)),$(SEEDS),0,1,2)
crossing: $(STAMP)
	$(BIN)/noderun train -m experiment=crossing profile=$(OTHER_PROFILE) seed=$(CROSSING_SEEDS)

table: $(STAMP)
	$(BIN)/noderun table

plot: $(STAMP)
	$(BIN)/noderun plot

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ode.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_gradients.py
	$(BIN)/python benchmarks/bench_rnode.py

clean:
	rm -rf outputs multirun .pytest_cache
