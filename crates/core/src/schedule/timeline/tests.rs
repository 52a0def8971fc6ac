use super::*;
use crate::testutil::{all_layers, tiny_llama as setup};
use crate::FreezeSpec;

fn ctx(total_steps: u64) -> TimelineContext {
    TimelineContext {
        total_steps,
        steps_per_epoch: 4,
        seed: 7,
        options: PlanOptions::default(),
    }
}

fn schedule(text: &str) -> ScheduleSpec {
    toml::from_str(text).unwrap()
}

fn layers_of(t: &Timeline) -> Vec<(u64, u64, Vec<usize>)> {
    t.phases
        .iter()
        .map(|p| (p.start_step, p.end_step, p.layers.clone()))
        .collect()
}

#[test]
fn static_is_one_phase_equal_to_the_plan() {
    let (_d, layout, p) = setup(&all_layers());
    let t = timeline(&layout, &p, &ScheduleSpec::default(), ctx(10)).unwrap();
    assert_eq!(layers_of(&t), vec![(0, 10, (0..6).collect())]);
    assert_eq!(t.phases[0].trainable, p.trainable);
    assert_eq!(t.ever_trainable, p.trainable);
    assert_eq!(t.peak_memory, p.memory);
}

#[test]
fn cycle_visits_blocks_in_order_and_wraps() {
    let (_d, layout, p) = setup(&all_layers());
    let t = timeline(
        &layout,
        &p,
        &schedule("kind = \"cycle\"\ninterval = 3\ngroup = 2"),
        ctx(20),
    )
    .unwrap();
    let expected = vec![
        (0, 3, vec![0, 1]),
        (3, 6, vec![2, 3]),
        (6, 9, vec![4, 5]),
        (9, 12, vec![0, 1]),
        (12, 15, vec![2, 3]),
        (15, 18, vec![4, 5]),
        (18, 20, vec![0, 1]),
    ];
    assert_eq!(layers_of(&t), expected);
    assert_eq!(t.optimizer_state, StatePolicy::Reset);
    let down = timeline(
        &layout,
        &p,
        &schedule("kind = \"cycle\"\ninterval = 3\ngroup = 2\norder = \"descending\""),
        ctx(9),
    )
    .unwrap();
    assert_eq!(
        layers_of(&down),
        vec![(0, 3, vec![4, 5]), (3, 6, vec![2, 3]), (6, 9, vec![0, 1])]
    );
    let fixed = schedule("kind = \"cycle\"\ninterval = 3\norder = \"fixed\"\nstart_block = 4");
    assert_eq!(
        layers_of(&timeline(&layout, &p, &fixed, ctx(9)).unwrap()),
        vec![(0, 9, vec![4])],
        "fixed never switches"
    );
    // Each phase trains exactly its layers' tensors; embeddings and lm_head never (BAdam).
    for phase in &t.phases {
        assert!(phase.trainable.iter().all(|n| phase
            .layers
            .iter()
            .any(|l| n.starts_with(&format!("model.layers.{l}.")))));
    }
}

#[test]
fn random_cycle_is_a_fresh_permutation_each_round_and_reproducible() {
    let (_d, layout, p) = setup(&all_layers());
    let spec = schedule("kind = \"cycle\"\ninterval = 1\norder = \"random\"\nseed = 11");
    let t = timeline(&layout, &p, &spec, ctx(18)).unwrap();
    assert_eq!(
        t,
        timeline(&layout, &p, &spec, ctx(18)).unwrap(),
        "same seed, same timeline"
    );
    // Without merging, 18 one-step phases are 3 rounds of the 6 layers; each round visits every layer once.
    let visits: Vec<usize> = t
        .phases
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.layers[0], (p.end_step - p.start_step) as usize))
        .collect();
    for round in visits.chunks(6) {
        let mut r = round.to_vec();
        r.sort_unstable();
        assert_eq!(r, (0..6).collect::<Vec<_>>(), "round {round:?}");
    }
    let other = timeline(
        &layout,
        &p,
        &schedule("kind = \"cycle\"\ninterval = 1\norder = \"random\"\nseed = 12"),
        ctx(18),
    )
    .unwrap();
    assert_ne!(layers_of(&t), layers_of(&other));
}

#[test]
fn sample_draws_gamma_distinct_layers_reproducibly() {
    let spec = FreezeSpec {
        all_layers: true,
        extra: vec!["embed_tokens".into(), "lm_head".into()],
        ..Default::default()
    };
    let (_d, layout, p) = setup(&spec);
    let s = schedule("kind = \"sample\"\ninterval = 2\ngamma = 3");
    let t = timeline(&layout, &p, &s, ctx(40)).unwrap();
    assert_eq!(t, timeline(&layout, &p, &s, ctx(40)).unwrap());
    let mut seen = BTreeSet::new();
    for phase in &t.phases {
        assert_eq!(phase.layers.len(), 3, "without replacement: 3 distinct layers");
        seen.extend(phase.layers.iter().copied());
        // Embeddings and lm_head (the plan's extras) train in every phase, as in LISA.
        assert!(phase.trainable.contains(&"model.embed_tokens.weight".to_string()));
        assert!(phase.trainable.contains(&"lm_head.weight".to_string()));
    }
    assert_eq!(seen.len(), 6, "20 draws reach every layer");
    assert_eq!(t.optimizer_state, StatePolicy::Keep);
    let err = timeline(&layout, &p, &schedule("kind = \"sample\"\ngamma = 7"), ctx(40)).unwrap_err();
    assert!(
        err.to_string().contains("gamma = 7, but the selection has 6 layers"),
        "{err}"
    );
}

#[test]
fn progressive_grows_from_the_top_in_epochs_with_decaying_rates() {
    let (_d, layout, p) = setup(&all_layers());
    let s = schedule("kind = \"progressive\"\ngroup = 2\nlr_decay = 2.0");
    // 4 steps per epoch, one group per epoch.
    let t = timeline(&layout, &p, &s, ctx(20)).unwrap();
    assert_eq!(
        layers_of(&t),
        vec![(0, 4, vec![4, 5]), (4, 8, vec![2, 3, 4, 5]), (8, 20, (0..6).collect())]
    );
    let last = &t.phases[2];
    assert_eq!(
        last.lr_scale.get("model.layers.5.mlp.up_proj.weight"),
        None,
        "top group at the base rate"
    );
    assert_eq!(last.lr_scale["model.layers.3.mlp.up_proj.weight"], 0.5);
    assert_eq!(last.lr_scale["model.layers.0.mlp.up_proj.weight"], 0.25);
    assert_eq!(t.peak_phase, 2, "the full selection needs the most memory");
    let short = timeline(&layout, &p, &s, ctx(6)).unwrap();
    assert_eq!(layers_of(&short), vec![(0, 4, vec![4, 5]), (4, 6, vec![2, 3, 4, 5])]);
    assert!(
        short.notes[0].contains("before 1 of the 3 groups unfreeze"),
        "{:?}",
        short.notes
    );
    let up = schedule("kind = \"progressive\"\ngroup = 3\norder = \"ascending\"\ninterval = 5\nunit = \"steps\"");
    assert_eq!(
        layers_of(&timeline(&layout, &p, &up, ctx(12)).unwrap()),
        vec![(0, 5, vec![0, 1, 2]), (5, 12, (0..6).collect())]
    );
}

#[test]
fn a_schedule_moves_through_the_selection_only() {
    // Layers 1-3, MLP only: phases hold only those layers' MLP tensors.
    let spec = FreezeSpec {
        layers: Some("1-3".into()),
        modules: vec!["mlp".into()],
        ..Default::default()
    };
    let (_d, layout, p) = setup(&spec);
    let s = schedule("kind = \"cycle\"\ninterval = 2\nalways = [\"norm\"]");
    let t = timeline(&layout, &p, &s, ctx(6)).unwrap();
    assert_eq!(t.layers, vec![1, 2, 3]);
    assert_eq!(t.always, vec!["model.norm.weight".to_string()]);
    for phase in &t.phases {
        let l = phase.layers[0];
        let expected: Vec<String> = std::iter::once("model.norm.weight".to_string())
            .chain(
                ["down_proj", "gate_proj", "up_proj"]
                    .iter()
                    .map(|m| format!("model.layers.{l}.mlp.{m}.weight")),
            )
            .collect();
        let mut got = phase.trainable.clone();
        got.sort();
        let mut want = expected;
        want.sort();
        assert_eq!(got, want);
    }
    assert_eq!(t.phase_at(0), 0);
    assert_eq!(t.phase_at(3), 1);
    assert_eq!(t.phase_at(99), 2);
    assert!(t.ever_trains("model.layers.2.mlp.up_proj.weight"));
    assert!(!t.ever_trains("model.layers.2.self_attn.q_proj.weight"));
}

#[test]
fn impossible_schedules_are_clear_errors() {
    let (_d, layout, p) = setup(&FreezeSpec {
        no_layers: true,
        extra: vec!["norm".into()],
        ..Default::default()
    });
    let err = timeline(&layout, &p, &schedule("kind = \"cycle\""), ctx(10)).unwrap_err();
    assert!(
        err.to_string()
            .contains("moves through layers, but the selection trains none"),
        "{err}"
    );
    let (_d, layout, p) = setup(&all_layers());
    let err = timeline(&layout, &p, &schedule("kind = \"cycle\"\nstart_block = 6"), ctx(10)).unwrap_err();
    assert!(
        err.to_string().contains("start_block = 6, but there are 6 blocks"),
        "{err}"
    );
    let err = timeline(&layout, &p, &schedule("kind = \"cycle\"\ngroup = 9"), ctx(10)).unwrap_err();
    assert!(err.to_string().contains("group = 9"), "{err}");
    let err = timeline(&layout, &p, &schedule("kind = \"cycle\"\nalways = [\"nope\"]"), ctx(10)).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}
