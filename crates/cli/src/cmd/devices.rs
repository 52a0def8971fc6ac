use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct DevicesArgs {
    /// One JSON object: {"devices": [{id, backend, name, total_memory, free_memory, compute_capability}], "notes"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &DevicesArgs) -> Result<()> {
    let inv = freezetune_train::inventory::inventory();
    if args.json {
        println!("{}", serde_json::to_string(&inv)?);
        return Ok(());
    }
    let gib = |b: Option<u64>| {
        b.map_or("-".to_string(), |b| {
            format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        })
    };
    println!("{:<8} {:<48} {:>11} {:>11}", "device", "name", "total", "free");
    for d in &inv.devices {
        let mut name = d.name.clone();
        if let Some(cc) = &d.compute_capability {
            name.push_str(&format!(" (compute {cc})"));
        }
        println!(
            "{:<8} {:<48} {:>11} {:>11}",
            d.id,
            name,
            gib(d.total_memory),
            gib(d.free_memory)
        );
    }
    for note in &inv.notes {
        println!("note: {note}");
    }
    Ok(())
}
