"""`lookalike people`: a thin layer over `query.people` (query/people/), which does the work."""
from __future__ import annotations

import json

import click

from lookalike.query.app.errors import EXIT_OK
from lookalike.query.app.options import existing_db, out_dir, settings_for, storage_options

PEOPLE_EPILOG = """
what it does:
  Groups the faces of a model's collection into persons: average linkage over a k-nearest-neighbour
  graph from the database (two groups of faces join while the mean cosine of their pairs reaches
  the threshold). The first run clusters every face; later runs cluster only the faces ingested
  since (they join a person or start new ones); --recluster clusters every face again. A person
  keeps its id across runs (a recluster gives each cluster the id of the person it shares the most
  faces with). Faces below --min-quality are not clustered; they are listed apart. A person is
  named by the user (lookalike people name), else by the identity (folder name, CelebA number)
  most of its labelled faces carry (marked *). Names and merges are kept in the database; a
  deleted photo's faces leave their person at the next run.


  lookalike people                      # the table (persons largest first)
  lookalike people --json               # {"people": [{"id", "name", "faces": [{"source", "face"}]}]}
  lookalike people --out sheet/         # sheet/people.png: a row of faces per person
  lookalike people name 12 "Aunt May"   # name person 12 ('' removes the name)
  lookalike people merge 12 40 41       # persons 40 and 41 become person 12


exit codes: 0 ok, 2 usage (missing database or collection, unknown person, model without a
  threshold), 6 Milvus error.
"""


def model_option(f):
    return click.option("--model", default=None,
                        help="the model whose faces are grouped (default: the first collection with a "
                             "calibrated threshold, dlib)")(f)


@click.group("people", invoke_without_command=True, epilog=PEOPLE_EPILOG)
@model_option
@click.option("--recluster", is_flag=True, help="cluster every face again (ids kept where the persons stay)")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="cosine the mean of two groups' pairs must reach (default: the model's calibrated one)")
@click.option("--min-quality", type=click.FloatRange(0.0, 1.0), default=None,
              help="faces below this quality are not clustered (default 0.4)")
@click.option("--min-faces", type=click.IntRange(1), default=1, show_default=True,
              help="show persons with at least N faces (table and sheet)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--out", default=None, metavar="DIR", help="write DIR/people.png (contact sheet) and DIR/people.json")
@storage_options
@click.pass_context
def people_group(ctx, model, recluster, threshold, min_quality, min_faces, as_json, out, db, uri, token,
                 profile) -> int:
    """Group the stored faces into persons: a table, --json, or a contact sheet."""
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    from lookalike.ingest.quality import DEFAULT_MIN_QUALITY
    from lookalike.query.people import people, render_people

    settings = existing_db(settings_for(db=db, uri=uri, token=token, profile=profile))
    result = people(model, settings=settings, recluster=recluster, threshold=threshold,
                    min_quality=DEFAULT_MIN_QUALITY if min_quality is None else min_quality)
    folder = out_dir(out)
    if folder is not None:
        (folder / "people.json").write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        render_people(result, str(folder / "people.png"), min_faces=min_faces)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in result.lines(min_faces=min_faces):
            click.echo(line)
        if folder is not None:
            click.echo(f"wrote {folder / 'people.png'} and {folder / 'people.json'}")
    return EXIT_OK


@people_group.command("name")
@click.argument("person", type=int)
@click.argument("name")
@model_option
@storage_options
def name_command(person, name, model, db, uri, token, profile) -> int:
    """Name person PERSON ('' removes the name); kept in the database."""
    from lookalike.query.people import name_person

    pid = name_person(person, name, model, settings=existing_db(settings_for(db=db, uri=uri, token=token,
                                                                              profile=profile)))
    click.echo(f"person {pid}: {name.strip() or 'name removed'}" + (f" (person {person} was merged into {pid})"
                                                                   if pid != person else ""))
    return EXIT_OK


@people_group.command("merge")
@click.argument("keep", type=int)
@click.argument("others", type=int, nargs=-1, required=True)
@model_option
@storage_options
def merge_command(keep, others, model, db, uri, token, profile) -> int:
    """Merge persons OTHERS into person KEEP; kept in the database, also across reclusters."""
    from lookalike.query.people import merge_persons

    pid = merge_persons(keep, list(others), model, settings=existing_db(settings_for(db=db, uri=uri, token=token,
                                                                                      profile=profile)))
    click.echo(f"merged {', '.join(map(str, others))} into person {pid}")
    return EXIT_OK
